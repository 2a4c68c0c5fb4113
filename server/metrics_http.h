// File: server/metrics_http.h
//
// A minimal HTTP/1.1 server (Boost.Beast) for the Prometheus scrape endpoint: GET /metrics answers
// the text exposition format (text/plain; version=0.0.4) produced by a render callback; any other
// path is 404, any other method 405. One request per connection; a connection idle for 10 s is
// closed.
//
// Thread safety: runs entirely on one io_context. Start, port and Stop must be called from the
// thread that runs the io_context (or before it runs); the render callback runs on that thread too.
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

  // Binds `address` ("host:port"; port 0 picks a free one) and starts accepting.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE if it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(boost::asio::io_context& io,
                                                                  const std::string& address,
                                                                  Render render);
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
