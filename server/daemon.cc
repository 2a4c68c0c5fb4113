#include "server/daemon.h"

#include <csignal>
#include <fstream>
#include <sstream>
#include <utility>

#include <boost/asio/post.hpp>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/reflection_service.h"

namespace pagepool::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Daemon::Daemon(const DaemonOptions& options, std::ostream* log)
    : options_(options), log_(log), signals_(io_), tick_(io_), flush_tick_(io_) {}

Daemon::~Daemon() {
  if (server_ && !stopping_.exchange(true)) server_->Shutdown();
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options,
                                                      std::ostream* log) {
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
  std::unique_ptr<Daemon> d(new Daemon(options, log));
  d->started_ = std::chrono::steady_clock::now();

  RuntimeOptions ro;
  ro.memory_bytes = static_cast<uint64_t>(options.memory_gib * double(uint64_t{1} << 30));
  ro.max_devices = options.max_devices;
  ro.max_pools = options.max_pools;
  ro.max_pages_per_call = options.max_pages_per_call;
  auto runtime = Runtime::Create(ro);
  if (!runtime.ok()) return runtime.status();
  d->runtime_ = std::move(*runtime);
  d->service_ = std::make_unique<PagePoolServiceImpl>(d->runtime_.get(), &d->stats_,
                                                    options.max_message_bytes);

  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty()) {
    auto cert = ReadFile(options.tls_cert, "tls-cert");
    if (!cert.ok()) return cert.status();
    auto key = ReadFile(options.tls_key, "tls-key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    creds = grpc::SslServerCredentials(ssl);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // Our reflection, not the stock plugin: it serves the .proto comments (server/reflection_service.h).
  if (absl::Status s = EnableServerReflection(&builder); !s.ok()) return s;
  builder.AddListeningPort(options.listen, creds, &d->grpc_port_);
  builder.RegisterService(d->service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  d->server_ = builder.BuildAndStart();
  if (!d->server_ || d->grpc_port_ == 0) {
    d->server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen, "' (in use, or not host:port)"));
  }
  d->server_->GetHealthCheckService()->SetServingStatus(true);

  if (!options.metrics_listen.empty() && options.metrics_listen != "off") {
    Daemon* self = d.get();
    auto m = MetricsHttpServer::Start(d->io_, options.metrics_listen,
                                      [self] { return self->RenderMetrics(); });
    if (!m.ok()) {
      d->server_->Shutdown();
      d->stopping_ = true;
      return m.status();
    }
    d->metrics_ = std::move(*m);
  }

  if (options.handle_signals) {
    d->signals_.add(SIGINT);
    d->signals_.add(SIGTERM);
    Daemon* self = d.get();
    d->signals_.async_wait([self](const boost::system::error_code& ec, int signo) {
      if (ec) return;
      *self->log_ << "pagepoold: " << (signo == SIGINT ? "SIGINT" : "SIGTERM")
                  << ", shutting down" << std::endl;
      self->Shutdown();
    });
  }
  d->ArmTick();
  d->ArmFlushTick();
  return d;
}

void Daemon::ArmTick() {
  tick_.expires_after(std::chrono::seconds(1));
  tick_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    runtime_->ReleaseRetryTick();
    ArmTick();
  });
}

void Daemon::ArmFlushTick() {
  flush_tick_.expires_after(std::chrono::milliseconds(10));
  flush_tick_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    runtime_->FlushQueueTick();
    ArmFlushTick();
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
  if (metrics_) metrics_->Stop();

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
  summary_ = s;
  io_.stop();
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
