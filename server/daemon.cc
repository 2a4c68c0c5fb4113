// File: server/daemon.cc
#include "server/daemon.h"

#include <csignal>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/reflection_service.h"
#include <boost/asio/post.hpp>
#include <grpcpp/health_check_service_interface.h>

namespace pagepool::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Options Start refuses before it builds anything.
absl::Status CheckOptions(const DaemonOptions& options) {
  if (!(options.memory_gib > 0) || options.memory_gib > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory-gib ", options.memory_gib, " is not in (0, 1024]"));
  }
  if (options.max_pages_per_call == 0 || options.max_message_bytes < 1024) {
    return absl::InvalidArgumentError("max-pages-per-call must be > 0, max-message-bytes >= 1024");
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("tls-cert and tls-key go together: give both or neither");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "tls-client-ca (mutual TLS) needs tls-cert and tls-key: the daemon must serve TLS");
  }
  if (options.max_watch_queue == 0 || options.metrics_max_connections == 0) {
    return absl::InvalidArgumentError("max-watch-queue and metrics-max-connections must be > 0");
  }
  return absl::OkStatus();
}

// TLS from the PEM files when both are given (mutual TLS with a client CA), else plaintext.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const DaemonOptions& options) {
  if (options.tls_cert.empty()) return grpc::InsecureServerCredentials();
  auto cert = ReadFile(options.tls_cert, "tls-cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadFile(options.tls_key, "tls-key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_client_ca.empty()) {
    auto ca = ReadFile(options.tls_client_ca, "tls-client-ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

Daemon::Daemon(const DaemonOptions& options, std::ostream* log)
    : options_(options), log_(log), signals_(io_), tick_(io_), flush_tick_(io_), trim_tick_(io_) {}

Daemon::~Daemon() {
  if (server_ && !stopping_.exchange(true)) server_->Shutdown();
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options,
                                                      std::ostream* log) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  std::unique_ptr<Daemon> d(new Daemon(options, log));
  d->started_ = std::chrono::steady_clock::now();
  if (absl::Status s = d->StartRuntime(); !s.ok()) return s;
  if (absl::Status s = d->StartGrpc(); !s.ok()) return s;
  if (absl::Status s = d->StartMetrics(); !s.ok()) {
    d->server_->Shutdown();
    d->stopping_ = true;
    return s;
  }
  if (options.handle_signals) d->WatchSignals();
  d->ArmTimer(d->tick_, std::chrono::seconds(1), &Runtime::ReleaseRetryTick);
  d->ArmTimer(d->flush_tick_, std::chrono::milliseconds(10), &Runtime::FlushQueueTick);
  d->ArmTimer(d->trim_tick_, std::chrono::seconds(1), &Runtime::TrimCachesTick);
  return d;
}

absl::Status Daemon::StartRuntime() {
  RuntimeOptions ro;
  ro.memory_bytes = static_cast<uint64_t>(options_.memory_gib * double(uint64_t{1} << 30));
  ro.max_devices = options_.max_devices;
  ro.max_pools = options_.max_pools;
  ro.max_pages_per_call = options_.max_pages_per_call;
  ServiceOptions so;
  so.max_message_bytes = options_.max_message_bytes;
  so.max_watch_queue = options_.max_watch_queue;
  so.max_streams = options_.max_streams;
  so.max_streams_per_peer = options_.max_streams_per_peer;
  so.max_held_per_stream = options_.max_held_per_stream;
  if (!options_.auth_token_file.empty()) {
    auto token = BearerToken::ReadFile(options_.auth_token_file);
    if (!token.ok()) return token.status();
    so.auth_token = *std::move(token);
  }
  auto runtime = Runtime::Create(ro);
  if (!runtime.ok()) return runtime.status();
  runtime_ = std::move(*runtime);
  service_ = std::make_unique<PagePoolServiceImpl>(runtime_.get(), &stats_, so);
  return absl::OkStatus();
}

absl::Status Daemon::StartGrpc() {
  auto creds = Credentials(options_);
  if (!creds.ok()) return creds.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // Our reflection, not the stock plugin: it serves the .proto comments
  // (server/reflection_service.h).
  if (absl::Status s = EnableServerReflection(&builder); !s.ok()) return s;
  builder.AddListeningPort(options_.listen, *creds, &grpc_port_);
  builder.RegisterService(service_.get());
  // Calls to any method no service has: UNIMPLEMENTED naming it (server/unknown_method.h).
  unknown_method_ = std::make_unique<UnknownMethodService>(&stats_);
  builder.RegisterCallbackGenericService(unknown_method_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
  if (options_.keepalive_ms > 0) {
    // gRPC takes stream writes whether or not the peer reads them (a peer that stopped reading
    // gets its answers buffered in the transport, without bound): a connection whose peer does
    // not answer a ping within keepalive_ms is closed, its calls cancelled, its buffers freed.
    const int ms = static_cast<int>(options_.keepalive_ms);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ms);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  server_ = builder.BuildAndStart();
  if (!server_ || grpc_port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options_.listen, "' (in use, or not host:port)"));
  }
  // The empty name and the service's own (Kubernetes' grpc probe may name either); Shutdown's
  // SetServingStatus(false) turns both NOT_SERVING.
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus(pagepool::v1::PagePoolService::service_full_name(), true);
  health->SetServingStatus(true);
  return absl::OkStatus();
}

absl::Status Daemon::StartMetrics() {
  if (options_.metrics_listen.empty() || options_.metrics_listen == "off") return absl::OkStatus();
  auto m = MetricsHttpServer::Start(
      io_, options_.metrics_listen, [this] { return RenderMetrics(); },
      options_.metrics_max_connections);
  if (!m.ok()) return m.status();
  metrics_ = std::move(*m);
  return absl::OkStatus();
}

void Daemon::WatchSignals() {
  signals_.add(SIGINT);
  signals_.add(SIGTERM);
  signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    *log_ << "pagepoold: " << (signo == SIGINT ? "SIGINT" : "SIGTERM") << ", shutting down"
          << std::endl;
    Shutdown();
  });
}

void Daemon::ArmTimer(boost::asio::steady_timer& timer, std::chrono::milliseconds period,
                      void (Runtime::*tick)()) {
  timer.expires_after(period);
  timer.async_wait([this, &timer, period, tick](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    (runtime_.get()->*tick)();
    ArmTimer(timer, period, tick);
  });
}

void Daemon::RequestStop() {
  boost::asio::post(io_, [this] { Shutdown(); });
}

void Daemon::Shutdown() {
  if (stopping_.exchange(true)) return;
  server_->GetHealthCheckService()->SetServingStatus(false);
  // WatchEvents streams end with OK; then new calls are refused and calls in flight get the grace
  // period before they are cancelled.
  runtime_->CloseEvents();
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(options_.shutdown_grace_ms));
  server_->Wait();
  ShutdownReport r = runtime_->Shutdown();
  boost::system::error_code ignored;
  signals_.cancel(ignored);
  tick_.cancel();
  flush_tick_.cancel();
  trim_tick_.cancel();
  if (metrics_) metrics_->Stop();

  summary_ = Summary(r);
  io_.stop();
}

std::string Daemon::Summary(const ShutdownReport& r) const {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  std::string s;
  absl::StrAppend(&s, "pagepoold summary (up ", absl::StrFormat("%.1f", secs), " s)\n");
  auto line = [&s](const char* label, const std::string& value) {
    absl::StrAppend(&s, "  ", absl::StrFormat("%-29s", label), value, "\n");
  };
  line("devices:", absl::StrCat(r.devices));
  line("pools created:", absl::StrCat(r.pools_created));
  line("pools destroyed at shutdown:", absl::StrCat(r.pools));
  line("pages in flight at shutdown:", absl::StrCat(r.inflight_at_destroy));
  line("pages unmapped at shutdown:", absl::StrCat(r.pages_unmapped));
  line("violations:", absl::StrCat(r.violations));
  line("traffic:", absl::StrCat(stats_.traffic_batches(), " batches, ", stats_.traffic_page_ops(),
                                " page ops, ", stats_.traffic_errors(), " refused"));
  absl::StrAppend(&s, "  rpc calls:\n", stats_.Summary());
  return s;
}

int Daemon::Run() {
  io_.run();
  *log_ << summary_ << std::flush;
  return 0;
}

std::string Daemon::RenderMetrics() {
  std::string out;
  runtime_->AppendMetrics(&out);
  stats_.AppendMetrics(&out);
  return out;
}

}  // namespace pagepool::server
