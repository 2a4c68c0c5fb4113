// Tests of base/rcu.h: lazy registration, nesting, grace periods, call_rcu batching and the
// barrier.
#include "base/rcu.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace pagepool::base {
namespace {

struct Node {
  rcu::Head head;
  std::atomic<int>* freed;
  int value;
};

void FreeNode(rcu::Head* h) {
  rcu::CallbackBegin();
  Node* n = reinterpret_cast<Node*>(reinterpret_cast<char*>(h) - offsetof(Node, head));
  n->freed->fetch_add(1);
  delete n;
}

TEST(Rcu, ReadLockNestsAndRegistersLazily) {
  std::thread t([] {
    EXPECT_FALSE(rcu::ReadLockHeld());
    {
      rcu::ReadLock outer;
      EXPECT_TRUE(rcu::ReadLockHeld());
      {
        rcu::ReadLock inner;
        EXPECT_TRUE(rcu::ReadLockHeld());
      }
      EXPECT_TRUE(rcu::ReadLockHeld());
    }
    EXPECT_FALSE(rcu::ReadLockHeld());
  });
  t.join();
}

TEST(Rcu, SynchronizeWaitsForPreexistingReader) {
  std::atomic<bool> in_reader{false};
  std::atomic<bool> release{false};
  std::atomic<bool> reader_done{false};
  std::thread reader([&] {
    rcu::ReadLock l;
    in_reader = true;
    while (!release) std::this_thread::yield();
    reader_done = true;
  });
  while (!in_reader) std::this_thread::yield();
  std::atomic<bool> synced{false};
  std::thread writer([&] {
    rcu::Synchronize();
    EXPECT_TRUE(reader_done.load());  // the grace period could not end before the reader did
    synced = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(synced.load());
  release = true;
  reader.join();
  writer.join();
  EXPECT_TRUE(synced.load());
}

TEST(Rcu, CallRcuFromManyThreadsThenBarrier) {
  std::atomic<int> freed{0};
  constexpr int kThreads = 4, kPerThread = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        rcu::ReadLock l;  // call_rcu is allowed inside a read-side section
        rcu::CallRcu(&(new Node{{}, &freed, i})->head, &FreeNode);
      }
    });
  }
  for (auto& t : threads) t.join();
  rcu::Barrier();
  EXPECT_EQ(freed.load(), kThreads * kPerThread);
  rcu::Barrier();  // nothing queued: returns promptly
}

}  // namespace
}  // namespace pagepool::base
