// File: tests/server/event_hub_test.cc
//
// server::EventHub: numbering and stamping, fan-out to every sink in publish order, unsubscribe,
// and close (OnClose once, then no events and no new subscriptions).
#include "server/event_hub.h"

#include <vector>

#include "gtest/gtest.h"

namespace pagepool::server {
namespace {

namespace v1 = ::pagepool::v1;

class Sink final : public EventSink {
 public:
  void OnEvent(const v1::Event& e) override { events.push_back(e); }
  void OnClose() override { ++closes; }
  std::vector<v1::Event> events;
  int closes = 0;
};

v1::Event Typed(v1::EventType type) {
  v1::Event e;
  e.set_type(type);
  e.set_seq(999);  // overwritten by the hub
  return e;
}

TEST(EventHubTest, NumbersStampsAndFansOutInOrder) {
  EventHub hub;
  Sink a, b;
  ASSERT_TRUE(hub.Subscribe(&a));
  hub.Publish(Typed(v1::EVENT_TYPE_DEVICE_ADD));
  ASSERT_TRUE(hub.Subscribe(&b));
  hub.Publish(Typed(v1::EVENT_TYPE_POOL_ADD));
  hub.Publish(Typed(v1::EVENT_TYPE_POOL_DELETE));
  ASSERT_EQ(a.events.size(), 3u);
  ASSERT_EQ(b.events.size(), 2u);  // only what was published after it subscribed
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(a.events[i].seq(), i + 1);
  EXPECT_EQ(b.events[0].seq(), 2u);
  EXPECT_EQ(b.events[1].type(), v1::EVENT_TYPE_POOL_DELETE);
  EXPECT_GT(a.events[0].time_ns(), 0);
  EXPECT_LE(a.events[0].time_ns(), a.events[2].time_ns());
}

TEST(EventHubTest, UnsubscribedSinkHearsNothingMore) {
  EventHub hub;
  Sink a, b;
  ASSERT_TRUE(hub.Subscribe(&a));
  ASSERT_TRUE(hub.Subscribe(&b));
  hub.Unsubscribe(&a);
  hub.Unsubscribe(&a);  // twice is harmless
  hub.Publish(Typed(v1::EVENT_TYPE_DEVICE_CHANGE));
  EXPECT_TRUE(a.events.empty());
  EXPECT_EQ(b.events.size(), 1u);
  hub.Close();
  EXPECT_EQ(a.closes, 0);
  EXPECT_EQ(b.closes, 1);
}

TEST(EventHubTest, CloseEndsEverySinkOnceAndRefusesWhatFollows) {
  EventHub hub;
  Sink a;
  ASSERT_TRUE(hub.Subscribe(&a));
  hub.Close();
  hub.Close();
  EXPECT_EQ(a.closes, 1);
  hub.Publish(Typed(v1::EVENT_TYPE_POOL_ADD));
  EXPECT_TRUE(a.events.empty());
  Sink late;
  EXPECT_FALSE(hub.Subscribe(&late));
  hub.Publish(Typed(v1::EVENT_TYPE_POOL_ADD));
  EXPECT_TRUE(late.events.empty());
}

}  // namespace
}  // namespace pagepool::server
