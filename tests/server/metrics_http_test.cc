// Tests of server/metrics_http: the /metrics endpoint is read-only (GET and HEAD, 405 with Allow
// otherwise), bounded (431 for a request head above 8 KiB, 413 for a body, 400 for garbage, 503
// past the connection limit) and keeps serving after each of those.
#include "server/metrics_http.h"

#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/loopback_http.h"
#include <arpa/inet.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <netinet/in.h>
#include <sys/socket.h>

namespace pagepool {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

class MetricsHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = server::MetricsHttpServer::Start(
        io_, "127.0.0.1:0", [] { return std::string("pagepool_up 1\n"); }, 2);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    port_ = server_->port();
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    boost::asio::post(io_, [this] { server_->Stop(); });
    work_.reset();
    io_.stop();
    thread_.join();
  }

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_ =
      boost::asio::make_work_guard(io_);
  std::unique_ptr<server::MetricsHttpServer> server_;
  uint16_t port_ = 0;
  std::thread thread_;
};

TEST_F(MetricsHttpTest, GetAndHeadOnly) {
  std::string get = testing::AskLoopback(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(get, StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(get, HasSubstr("\r\n\r\npagepool_up 1\n"));
  std::string head = testing::AskLoopback(port_, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(head, HasSubstr("Content-Length: 14\r\n"));
  EXPECT_THAT(head, Not(HasSubstr("pagepool_up")));  // no body
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) {
    std::string r =
        testing::AskLoopback(port_, std::string(method) + " /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_THAT(r, StartsWith("HTTP/1.1 405 Method Not Allowed")) << method;
    EXPECT_THAT(r, HasSubstr("Allow: GET, HEAD\r\n")) << method;
  }
  EXPECT_THAT(testing::AskLoopback(
                  port_, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
              StartsWith("HTTP/1.1 405"));
  EXPECT_THAT(testing::AskLoopback(port_, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"),
              StartsWith("HTTP/1.1 404"));
}

TEST_F(MetricsHttpTest, OversizedAndMalformedRequestsAreRefused) {
  std::string big(server::MetricsHttpServer::kMaxHeaderBytes + 100, 'a');
  EXPECT_THAT(
      testing::AskLoopback(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + big + "\r\n\r\n"),
      StartsWith("HTTP/1.1 431"));
  EXPECT_THAT(
      testing::AskLoopback(
          port_, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"),
      StartsWith("HTTP/1.1 413"));
  EXPECT_THAT(testing::AskLoopback(port_, "\x16\x03\x01 not http at all\r\n\r\n"),
              StartsWith("HTTP/1.1 400"));
  // Still serving.
  EXPECT_THAT(testing::AskLoopback(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
              StartsWith("HTTP/1.1 200"));
}

TEST_F(MetricsHttpTest, ConnectionsPastTheLimitGet503) {
  // Two idle connections take both places (they have not sent their request yet).
  int idle1 = testing::ConnectLoopback(port_);
  int idle2 = testing::ConnectLoopback(port_);
  ASSERT_GE(idle1, 0);
  ASSERT_GE(idle2, 0);
  std::string busy;
  for (int i = 0; i < 50 && busy.find("503") == std::string::npos; ++i) {
    busy = testing::AskLoopback(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    if (busy.find("503") == std::string::npos) usleep(20000);
  }
  EXPECT_THAT(busy, StartsWith("HTTP/1.1 503"));
  close(idle1);
  close(idle2);
  std::string ok;
  for (int i = 0; i < 50 && ok.find("200 OK") == std::string::npos; ++i) {
    ok = testing::AskLoopback(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    if (ok.find("200 OK") == std::string::npos) usleep(20000);
  }
  EXPECT_THAT(ok, StartsWith("HTTP/1.1 200 OK"));
}

}  // namespace
}  // namespace pagepool
