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

absl::StatusOr<std::shared_ptr<NicPool>> Nic::CreateNicPool(PagePoolParams params, bool xdp_rxq) {
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
  if (xdp_rxq) {
    // Nobody else can see the pool yet; no NAPI mutex is taken under mu_ (lock order).
    absl::Status used = (*pool)->UseXdpMem();
    if (!used.ok()) return used;
  }
  std::shared_ptr<NicPool> entry(new NicPool(std::move(*pool), xdp_rxq ? 1 : 0));
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

absl::StatusOr<PoolDestroyed> Nic::PutUserLocked(NicPool& pool) {
  const uint64_t id = pool.id();
  const bool last = pool.pool_->users() == 1;  // stable: every put and get holds napi_mu_
  if (last) {
    base::MutexLock l(&mu_);
    auto it = pools_.find(id);
    if (it != pools_.end()) it->second.destroying = true;
  }
  absl::StatusOr<DestroyResult> result = pool.pool_->Destroy();
  PoolDestroyed out;
  out.pool = pool.pool_;
  if (last) {
    base::MutexLock l(&mu_);
    auto it = pools_.find(id);
    if (it != pools_.end()) it->second.destroying = false;
    if (result.ok() && result->released) out.forgotten = ForgetLocked(id);
  }
  if (!result.ok()) return result.status();
  out.result = *result;
  return out;
}

absl::StatusOr<PoolDestroyed> Nic::DestroyPool(NicPool& pool) {
  base::MutexLock napi(&pool.napi_mu_);
  if (pool.pool_->destroyed()) {
    return absl::FailedPreconditionError(absl::StrCat("pool ", pool.id(), " is already destroyed"));
  }
  if (pool.napi_stopped_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool ", pool.id(), ": its driver already called page_pool_destroy (queue stopped); it is ",
        "kept for its ", pool.xdp_rxqs_, " xdp_rxq registration(s) until they are unregistered"));
  }
  pool.napi_stopped_ = true;  // napi_disable: the context never allocates again
  return PutUserLocked(pool);
}

absl::Status Nic::XdpRxqReg(NicPool& pool) {
  base::MutexLock napi(&pool.napi_mu_);
  if (pool.napi_stopped_) {
    return absl::FailedPreconditionError(
        absl::StrCat("xdp_rxq_info_reg_mem_model on pool ", pool.id(), ": its queue is stopped (",
                     pool.pool_->destroyed() ? "pool destroyed" : "its driver destroyed it", ")"));
  }
  absl::Status used = pool.pool_->UseXdpMem();
  if (!used.ok()) return used;
  ++pool.xdp_rxqs_;
  return absl::OkStatus();
}

absl::StatusOr<PoolDestroyed> Nic::XdpRxqUnreg(NicPool& pool) {
  base::MutexLock napi(&pool.napi_mu_);
  if (pool.xdp_rxqs_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("xdp_rxq_info_unreg on pool ", pool.id(), ": no xdp_rxq is registered on it",
                     pool.pool_->destroyed() ? " (the pool is destroyed)" : ""));
  }
  --pool.xdp_rxqs_;
  return PutUserLocked(pool);
}

absl::StatusOr<QueueRestart> Nic::RestartQueue(NicPool& old, PagePoolParams params,
                                               const RestartOptions& options) {
  if (FindNicPool(old.id()).get() != &old) {
    return absl::NotFoundError(
        absl::StrCat("pool ", old.id(), " is not a pool of device ", device_->name()));
  }
  base::MutexLock napi(&old.napi_mu_);
  if (old.napi_stopped_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "restart of the queue of pool ", old.id(), ": that queue is stopped (",
        old.pool_->destroyed() ? "pool destroyed" : "its driver destroyed it, or it was restarted",
        ")"));
  }
  // ndo_queue_mem_alloc: the new queue's pool, and its xdp_rxq, before anything of the old queue
  // is touched; on failure the old queue runs on.
  absl::StatusOr<std::shared_ptr<NicPool>> created =
      CreateNicPool(std::move(params), options.xdp_rxq);
  if (!created.ok()) return created.status();
  if (options.on_created) options.on_created(*created);
  // ndo_queue_stop: napi_disable of the old queue; ndo_queue_start of the new one. Then
  // ndo_queue_mem_free of the old queue, in mlx5e_free_rq's order: page_pool_destroy (the
  // driver's reference), then xdp_rxq_info_unreg.
  old.napi_stopped_ = true;
  QueueRestart out;
  out.pool = *std::move(created);
  absl::StatusOr<PoolDestroyed> put = PutUserLocked(old);
  if (!put.ok()) return put.status();
  out.old = *std::move(put);
  while (!options.keep_old_xdp_rxq && old.xdp_rxqs_ > 0) {
    --old.xdp_rxqs_;
    put = PutUserLocked(old);
    if (!put.ok()) return put.status();
    out.old = *std::move(put);
  }
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
    absl::StatusOr<PoolDestroyed> d = absl::FailedPreconditionError("destroyed meanwhile");
    {
      // The queue goes away with all its references: the driver's page_pool_destroy, then
      // xdp_rxq_info_unreg of every registration; the last of them destroys the pool.
      base::MutexLock napi(&pool->napi_mu_);
      if (pool->pool_->destroyed()) continue;  // destroyed concurrently by someone else
      if (!pool->napi_stopped_) {
        pool->napi_stopped_ = true;
        d = PutUserLocked(*pool);
      }
      while (pool->xdp_rxqs_ > 0 && !pool->pool_->destroyed()) {
        --pool->xdp_rxqs_;
        d = PutUserLocked(*pool);
      }
    }
    if (!d.ok() || !d->destroyed()) continue;
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
