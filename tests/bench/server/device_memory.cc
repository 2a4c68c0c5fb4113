// File: tests/bench/server/device_memory.cc
//
// What a device keeps once it is unbound. Devices are never deleted (GetDevice answers for an
// unbound one), so memory a device keeps after UnbindDevice accumulates in a daemon that binds and
// unbinds devices for hours. This tool makes DEVICES devices one after the other on one Runtime;
// each carries traffic on a pool of every strategy (pages allocated, recycled, returned from
// THREADS threads), then its pools are destroyed and it is unbound. After each device it prints
// the heap bytes in use (glibc mallinfo2: what the program holds, not what the allocator keeps
// from the kernel) and the process RSS; at the end the heap bytes kept per device, averaged over
// the second half (the first devices also warm up one-time caches).
//
// Usage: device_memory [DEVICES=40] [THREADS=4] [ROUNDS=200]
#include <malloc.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/runtime.h"

namespace {

namespace v1 = ::pagepool::v1;
using pagepool::server::Runtime;
using pagepool::server::RuntimeOptions;

uint64_t HeapInUse() { return mallinfo2().uordblks + mallinfo2().hblkhd; }

uint64_t RssKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

// Traffic on one pool from one thread: allocate batches, give them back (recycle or return).
void Churn(Runtime& rt, uint64_t pool, int rounds, int seed) {
  google::protobuf::RepeatedPtrField<v1::Page> pages;
  for (int r = 0; r < rounds; ++r) {
    pages.Clear();
    if (!rt.Allocate(pool, 64 + (r * 37 + seed) % 192, &pages).ok()) continue;
    google::protobuf::RepeatedPtrField<v1::PageHandle> handles;
    for (const v1::Page& p : pages) *handles.Add() = p.handle();
    if ((r + seed) % 3 == 0) {
      v1::ReturnResponse out;
      (void)rt.Return(pool, handles, &out);
    } else {
      v1::RecycleResponse out;
      (void)rt.Recycle(pool, handles, (r % 2) == 0, &out);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int devices = argc > 1 ? std::atoi(argv[1]) : 40;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 4;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 200;
  auto rt = Runtime::Create(RuntimeOptions{uint64_t{1} << 30, uint32_t(devices + 1), 1024, 65536});
  if (!rt.ok()) {
    std::fprintf(stderr, "device_memory: %s\n", rt.status().ToString().c_str());
    return 1;
  }
  std::vector<uint64_t> heap;
  std::printf("device\tmode\theap_bytes\trss_kib\n");
  for (int d = 0; d < devices; ++d) {
    v1::CreateDeviceRequest dreq;
    dreq.set_iommu_mode(v1::IommuMode(1 + d % 3));
    v1::Device dev;
    if (!(*rt)->CreateDevice(dreq, &dev).ok()) return 1;
    std::vector<uint64_t> pools;
    for (v1::Strategy s : {v1::STRATEGY_XARRAY, v1::STRATEGY_SCAN, v1::STRATEGY_NONE}) {
      v1::CreatePoolRequest preq;
      preq.set_device_id(dev.id());
      preq.set_strategy(s);
      v1::Pool p;
      if (!(*rt)->CreatePool(preq, &p).ok()) return 1;
      pools.push_back(p.id());
    }
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] { Churn(**rt, pools[t % pools.size()], rounds, t); });
    }
    for (auto& w : workers) w.join();
    for (uint64_t id : pools) {
      v1::DestroyPoolResponse out;
      (void)(*rt)->DestroyPool(id, &out);
    }
    v1::UnbindDeviceResponse out;
    if (!(*rt)->UnbindDevice(dev.id(), &out).ok()) return 1;
    (*rt)->ReleaseRetryTick();
    heap.push_back(HeapInUse());
    std::printf("%d\t%s\t%llu\t%llu\n", d + 1, v1::IommuMode_Name(dreq.iommu_mode()).c_str(),
                static_cast<unsigned long long>(heap.back()),
                static_cast<unsigned long long>(RssKiB()));
  }
  v1::ListPoolsResponse left;
  (void)(*rt)->ListPools(0, &left);
  std::printf("pools still listed: %d\n", left.pools_size());
  const int half = devices / 2;
  if (devices >= 4) {
    const double per = double(int64_t(heap.back()) - int64_t(heap[half - 1])) / (devices - half);
    std::printf("heap kept per unbound device (devices %d..%d): %.0f bytes\n", half + 1, devices,
                per);
  }
  return 0;
}
