// File: pool/nic.cc
#include "pool/nic.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/clock.h"

namespace pagepool::pool {

absl::StatusOr<std::unique_ptr<Nic>> Nic::Create(std::shared_ptr<PhysMemory> memory,
                                                 const NicConfig& config) {
  if (memory == nullptr) return absl::InvalidArgumentError("a NIC needs a PhysMemory");
  absl::StatusOr<std::unique_ptr<dma::Device>> device = dma::Device::Create(config.device);
  if (!device.ok()) return device.status();
  return std::unique_ptr<Nic>(
      new Nic(std::move(memory), std::shared_ptr<dma::Device>(std::move(*device)), config));
}

Nic::Nic(std::shared_ptr<PhysMemory> memory, std::shared_ptr<dma::Device> device,
         const NicConfig& config)
    : memory_(std::move(memory)), device_(std::move(device)), config_(config) {}

Nic::~Nic() { (void)DestroyLivePools(); }

absl::StatusOr<std::shared_ptr<NicPool>> Nic::CreateNicPool(PagePoolParams params) {
  params.ifindex = config_.ifindex;
  if (params.clock == nullptr) params.clock = config_.clock;
  if (!params.warn) params.warn = config_.warn;
  base::MutexLock l(&mu_);
  if (unbinding_ || !device_->bound()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", device_->name(), " is unbound: no new pools"));
  }
  absl::StatusOr<std::shared_ptr<PagePool>> pool = PagePool::Create(memory_, device_, params);
  if (!pool.ok()) return pool.status();
  std::shared_ptr<NicPool> entry(new NicPool(std::move(*pool)));
  pools_.emplace(entry->id(), Entry{entry});
  return entry;
}

absl::StatusOr<std::shared_ptr<PagePool>> Nic::CreatePool(PagePoolParams params) {
  absl::StatusOr<std::shared_ptr<NicPool>> p = CreateNicPool(std::move(params));
  if (!p.ok()) return p.status();
  return (*p)->shared_pool();
}

std::shared_ptr<NicPool> Nic::FindNicPool(uint64_t pool_id) const {
  base::MutexLock l(&mu_);
  auto it = pools_.find(pool_id);
  return it == pools_.end() ? nullptr : it->second.pool;
}

std::shared_ptr<PagePool> Nic::FindPool(uint64_t pool_id) const {
  std::shared_ptr<NicPool> p = FindNicPool(pool_id);
  return p == nullptr ? nullptr : p->shared_pool();
}

std::vector<std::shared_ptr<NicPool>> Nic::NicPools() const {
  base::MutexLock l(&mu_);
  std::vector<std::shared_ptr<NicPool>> out;
  out.reserve(pools_.size());
  for (const auto& [id, e] : pools_) out.push_back(e.pool);
  return out;
}

std::vector<std::shared_ptr<PagePool>> Nic::Pools() const {
  base::MutexLock l(&mu_);
  std::vector<std::shared_ptr<PagePool>> out;
  out.reserve(pools_.size());
  for (const auto& [id, e] : pools_) out.push_back(e.pool->shared_pool());
  return out;
}

size_t Nic::pool_count() const {
  base::MutexLock l(&mu_);
  return pools_.size();
}

bool Nic::ForgetLocked(uint64_t pool_id) {
  auto it = pools_.find(pool_id);
  if (it == pools_.end()) return false;
  it->second.pool->registered_.store(false, std::memory_order_release);
  pools_.erase(it);
  return true;
}

absl::StatusOr<PoolDestroyed> Nic::DestroyPool(NicPool& pool) {
  const uint64_t id = pool.id();
  absl::StatusOr<DestroyResult> result;
  {
    base::MutexLock napi(&pool.napi_mu_);
    if (pool.napi_stopped_ || pool.pool_->destroyed()) {
      return absl::FailedPreconditionError(absl::StrCat("pool ", id, " is already destroyed"));
    }
    pool.napi_stopped_ = true;  // napi_disable: the context never allocates again
    {
      base::MutexLock l(&mu_);
      auto it = pools_.find(id);
      if (it != pools_.end()) it->second.destroying = true;
    }
    result = pool.pool_->Destroy();
  }
  PoolDestroyed out;
  out.pool = pool.pool_;
  base::MutexLock l(&mu_);
  auto it = pools_.find(id);
  if (it != pools_.end()) it->second.destroying = false;
  if (!result.ok()) return result.status();
  out.result = *result;
  if (result->released) out.forgotten = ForgetLocked(id);
  return out;
}

absl::StatusOr<DestroyResult> Nic::DestroyPool(uint64_t pool_id) {
  std::shared_ptr<NicPool> pool = FindNicPool(pool_id);
  if (pool == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("pool ", pool_id, " not found on device ", device_->name()));
  }
  absl::StatusOr<PoolDestroyed> d = DestroyPool(*pool);
  if (!d.ok()) return d.status();
  return d->result;
}

UnbindResult Nic::DestroyLivePools() {
  const uint64_t start = base::MonotonicNanos();
  UnbindResult sum;
  for (const std::shared_ptr<NicPool>& pool : NicPools()) {
    if (pool->pool().destroyed()) continue;
    absl::StatusOr<PoolDestroyed> d = DestroyPool(*pool);
    if (!d.ok()) continue;  // destroyed concurrently by someone else
    ++sum.pools_destroyed;
    sum.inflight_at_destroy += d->result.inflight_at_destroy;
    sum.pages_unmapped += d->result.pages_unmapped;
    sum.destroyed.push_back(*std::move(d));
  }
  sum.duration_ns = base::MonotonicNanos() - start;
  return sum;
}

absl::StatusOr<UnbindResult> Nic::Unbind() {
  const uint64_t start = base::MonotonicNanos();
  {
    base::MutexLock l(&mu_);
    if (unbinding_) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device_->name(), " is already unbound"));
    }
    unbinding_ = true;  // no pool can be created from here on
  }
  UnbindResult result = DestroyLivePools();
  // A DestroyPool that another thread started (its pool already destroyed(), so skipped above) may
  // still be unmapping: nothing may follow the unbind while it does. And the netdev is gone: the
  // pools left waiting for pages count as not linked to one (page_pool_unreg_netdev).
  for (const std::shared_ptr<PagePool>& pool : Pools()) {
    pool->WaitForDestroy();
    pool->UnlinkNetdev();
  }
  absl::Status unbound = device_->Unbind();
  if (!unbound.ok()) return unbound;
  result.duration_ns = base::MonotonicNanos() - start;
  return result;
}

size_t Nic::ReleaseRetry(uint64_t now_ns, std::vector<std::shared_ptr<PagePool>>* released) {
  std::vector<std::shared_ptr<NicPool>> detached;
  {
    base::MutexLock l(&mu_);
    for (const auto& [id, e] : pools_) {
      if (!e.destroying && e.pool->pool().destroyed()) detached.push_back(e.pool);
    }
  }
  size_t waiting = 0;
  for (const std::shared_ptr<NicPool>& pool : detached) {
    if (pool->pool().ReleaseRetry(now_ns)) {
      ++waiting;
      continue;
    }
    base::MutexLock l(&mu_);
    if (ForgetLocked(pool->id()) && released != nullptr) released->push_back(pool->shared_pool());
  }
  return waiting;
}

}  // namespace pagepool::pool
