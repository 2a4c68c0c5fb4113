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

Nic::~Nic() {
  std::map<uint64_t, std::shared_ptr<PagePool>> pools;
  {
    base::MutexLock l(&mu_);
    pools.swap(pools_);
  }
  for (auto& [id, pool] : pools) {
    if (!pool->destroyed()) (void)pool->Destroy();
  }
}

absl::StatusOr<std::shared_ptr<PagePool>> Nic::CreatePool(PagePoolParams params) {
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
  pools_.emplace((*pool)->id(), *pool);
  return pool;
}

std::shared_ptr<PagePool> Nic::FindPool(uint64_t pool_id) const {
  base::MutexLock l(&mu_);
  auto it = pools_.find(pool_id);
  return it == pools_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<PagePool>> Nic::Pools() const {
  base::MutexLock l(&mu_);
  std::vector<std::shared_ptr<PagePool>> out;
  out.reserve(pools_.size());
  for (const auto& [id, pool] : pools_) out.push_back(pool);
  return out;
}

absl::StatusOr<DestroyResult> Nic::DestroyPool(uint64_t pool_id) {
  std::shared_ptr<PagePool> pool = FindPool(pool_id);
  if (pool == nullptr) {
    return absl::NotFoundError(absl::StrCat("pool ", pool_id, " not found on device ",
                                            device_->name()));
  }
  absl::StatusOr<DestroyResult> result = pool->Destroy();
  if (result.ok() && result->released) {
    base::MutexLock l(&mu_);
    pools_.erase(pool_id);
  }
  return result;
}

absl::StatusOr<UnbindResult> Nic::Unbind() {
  const uint64_t start = base::MonotonicNanos();
  std::vector<std::shared_ptr<PagePool>> pools;
  {
    base::MutexLock l(&mu_);
    if (unbinding_) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device_->name(), " is already unbound"));
    }
    unbinding_ = true;
    for (const auto& [id, pool] : pools_) pools.push_back(pool);
  }
  UnbindResult result;
  for (const std::shared_ptr<PagePool>& pool : pools) {
    if (pool->destroyed()) continue;
    absl::StatusOr<DestroyResult> d = pool->Destroy();
    if (!d.ok()) continue;  // destroyed concurrently by someone else
    ++result.pools_destroyed;
    result.inflight_at_destroy += d->inflight_at_destroy;
    result.pages_unmapped += d->pages_unmapped;
    if (d->released) {
      base::MutexLock l(&mu_);
      pools_.erase(pool->id());
    }
  }
  absl::Status unbound = device_->Unbind();
  if (!unbound.ok()) return unbound;
  result.duration_ns = base::MonotonicNanos() - start;
  return result;
}

size_t Nic::ReleaseRetry(uint64_t now_ns) {
  std::vector<std::shared_ptr<PagePool>> detached;
  {
    base::MutexLock l(&mu_);
    for (const auto& [id, pool] : pools_) {
      if (pool->destroyed()) detached.push_back(pool);
    }
  }
  size_t waiting = 0;
  for (const std::shared_ptr<PagePool>& pool : detached) {
    if (pool->ReleaseRetry(now_ns)) {
      ++waiting;
    } else {
      base::MutexLock l(&mu_);
      pools_.erase(pool->id());
    }
  }
  return waiting;
}

}  // namespace pagepool::pool
