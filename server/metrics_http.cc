// File: server/metrics_http.cc
#include "server/metrics_http.h"

#include <chrono>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace pagepool::server {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

bool SplitHostPort(const std::string& address, std::string* host, uint16_t* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  uint32_t p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p > 65535) return false;
  *host = h;
  *port = static_cast<uint16_t>(p);
  return true;
}

namespace {

// Connections served now and the limit; shared by the acceptor and its sessions (one thread).
struct ConnectionCount {
  uint32_t open = 0;
  uint32_t max = 0;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<MetricsHttpServer::Render> render,
          std::shared_ptr<ConnectionCount> count)
      : stream_(std::move(socket)), render_(std::move(render)), count_(std::move(count)) {
    ++count_->open;
    parser_.header_limit(MetricsHttpServer::kMaxHeaderBytes);
    parser_.body_limit(0);
  }
  ~Session() { --count_->open; }

  void Run() {
    stream_.expires_after(std::chrono::seconds(10));
    http::async_read(stream_, buffer_, parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (ec == beast::error::timeout || ec == http::error::end_of_stream) return;
                       self->Answer(ec);
                     });
  }

 private:
  // The status for a request that did not parse (`ec`), or for the one that did (ec 0).
  http::status Judge(beast::error_code ec, bool* with_body) {
    *with_body = false;
    // A body refused by its Content-Length is refused once the head is parsed.
    const bool head_done = parser_.is_header_done() || ec == http::error::body_limit ||
                           ec == http::error::unexpected_body;
    const http::verb method = head_done ? parser_.get().method() : http::verb::unknown;
    if (head_done && method != http::verb::get && method != http::verb::head) {
      return http::status::method_not_allowed;
    }
    if (ec == http::error::header_limit) return http::status::request_header_fields_too_large;
    if (ec == http::error::body_limit || ec == http::error::unexpected_body) {
      return http::status::payload_too_large;
    }
    if (ec) return http::status::bad_request;
    std::string target(parser_.get().target());
    if (target != "/metrics" && target.rfind("/metrics?", 0) != 0) return http::status::not_found;
    *with_body = method == http::verb::get;
    return http::status::ok;
  }

  void Answer(beast::error_code ec) {
    bool with_body = false;
    const http::status status = Judge(ec, &with_body);
    res_.version(11);
    res_.keep_alive(false);
    res_.result(status);
    res_.set(http::field::server, "pagepoold");
    if (status == http::status::ok) {
      res_.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      std::string body = (*render_)();
      res_.content_length(body.size());  // HEAD: the length of what GET would send
      if (with_body) res_.body() = std::move(body);
    } else {
      res_.set(http::field::content_type, "text/plain");
      if (status == http::status::method_not_allowed) res_.set(http::field::allow, "GET, HEAD");
      res_.body() =
          status == http::status::not_found
              ? std::string("not found: try /metrics\n")
              : absl::StrCat(std::string(res_.reason()), ": the endpoint serves GET /metrics\n");
      res_.prepare_payload();
    }
    http::async_write(stream_, res_, [self = shared_from_this()](beast::error_code, size_t) {
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    });
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  http::request_parser<http::empty_body> parser_;
  http::response<http::string_body> res_;
  std::shared_ptr<MetricsHttpServer::Render> render_;
  std::shared_ptr<ConnectionCount> count_;
};

// Answers 503 on a connection above the limit, as far as the socket takes it now, and closes it.
void Refuse(tcp::socket socket) {
  static constexpr std::string_view kBusy =
      "HTTP/1.1 503 Service Unavailable\r\nServer: pagepoold\r\nContent-Length: 0\r\n"
      "Connection: close\r\n\r\n";
  beast::error_code ignored;
  socket.non_blocking(true, ignored);
  socket.write_some(asio::buffer(kBusy.data(), kBusy.size()), ignored);
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

}  // namespace

struct MetricsHttpServer::Impl : std::enable_shared_from_this<MetricsHttpServer::Impl> {
  Impl(asio::io_context& io, Render r, uint32_t max_connections)
      : acceptor(io),
        render(std::make_shared<Render>(std::move(r))),
        count(std::make_shared<ConnectionCount>()) {
    count->max = max_connections;
  }

  void Accept() {
    acceptor.async_accept([self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec && self->count->open >= self->count->max) {
        Refuse(std::move(socket));
      } else if (!ec) {
        std::make_shared<Session>(std::move(socket), self->render, self->count)->Run();
      }
      self->Accept();
    });
  }

  tcp::acceptor acceptor;
  std::shared_ptr<Render> render;
  std::shared_ptr<ConnectionCount> count;
  uint16_t port = 0;
};

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    asio::io_context& io, const std::string& address, Render render, uint32_t max_connections) {
  std::string host;
  uint16_t port = 0;
  if (!SplitHostPort(address, &host, &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not host:port"));
  }
  beast::error_code ec;
  tcp::resolver resolver(io);
  auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "': cannot resolve host: ", ec.message()));
  }
  auto impl = std::make_shared<Impl>(io, std::move(render), max_connections);
  tcp::endpoint ep = results.begin()->endpoint();
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("metrics address '", address, "': cannot listen: ", ec.message()));
  }
  impl->port = impl->acceptor.local_endpoint().port();
  impl->Accept();
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(std::move(impl)));
}

MetricsHttpServer::MetricsHttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

uint16_t MetricsHttpServer::port() const { return impl_->port; }

void MetricsHttpServer::Stop() {
  beast::error_code ignored;
  if (impl_->acceptor.is_open()) impl_->acceptor.close(ignored);
}

}  // namespace pagepool::server
