// File: server/metrics_http.h
//
// A minimal HTTP/1.1 server (Boost.Beast) for the Prometheus scrape endpoint, read-only and
// bounded:
//   - GET /metrics answers the text exposition format (text/plain; version=0.0.4) produced by a
//     render callback; HEAD the same head without the body; any other path is 404;
//   - any other method is 405 with `Allow: GET, HEAD`; nothing the endpoint serves changes state;
//   - a request head above 8 KiB is 431, a request with a body is 413 (a GET has none), anything
//     that does not parse as HTTP/1.x is 400; the connection is closed after each answer;
//   - at most `max_connections` connections are served at once: one more is answered 503 and
//     closed at once; a connection that has not sent its request within 10 s is closed.
#ifndef PAGEPOOL_SERVER_METRICS_HTTP_H_
#define PAGEPOOL_SERVER_METRICS_HTTP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include <boost/asio/io_context.hpp>

namespace pagepool::server {

class MetricsHttpServer {
 public:
  using Render = std::function<std::string()>;

  static constexpr uint32_t kMaxHeaderBytes = 8192;

  // Binds `address` ("host:port"; port 0 picks a free one) and starts accepting.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE if it cannot be bound.
  // REQUIRES: max_connections >= 1.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(boost::asio::io_context& io,
                                                                  const std::string& address,
                                                                  Render render,
                                                                  uint32_t max_connections = 16);
  ~MetricsHttpServer();

  // The bound port.
  uint16_t port() const;
  // Stops accepting; connections in progress finish on their own.
  void Stop();

 private:
  struct Impl;
  explicit MetricsHttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Splits "host:port" / "[v6]:port". False when malformed.
bool SplitHostPort(const std::string& address, std::string* host, uint16_t* port);

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_METRICS_HTTP_H_
