// File: server/daemon.h
//
// Daemon: pagepoold put together. It owns the Runtime, the gRPC server (callback API, server
// reflection, grpc.health.v1), and one Boost.Asio io_context that carries
//   - SIGINT/SIGTERM: stop accepting, let calls in flight finish (streams get `shutdown_grace_ms`,
//     then are cancelled), destroy every pool with in-flight unmap, print the summary, exit 0;
//   - the 1 s release-retry tick of STRATEGY_NONE pools (Runtime::ReleaseRetryTick);
//   - the 10 ms lazy flush-queue timer of IOMMU_MODE_LAZY domains (Runtime::FlushQueueTick);
//   - the 1 s trim of the page-table caches a burst left behind (Runtime::TrimCachesTick);
//   - the Prometheus /metrics endpoint (Boost.Beast).
// gRPC runs calls on its own callback threads; the io_context runs on the thread that calls Run().
//
// Thread safety: Start and Run from one thread; RequestStop and the accessors from any thread.
#ifndef PAGEPOOL_SERVER_DAEMON_H_
#define PAGEPOOL_SERVER_DAEMON_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "server/metrics_http.h"
#include "server/rpc_stats.h"
#include "server/runtime.h"
#include "server/service.h"
#include "server/unknown_method.h"
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <grpcpp/grpcpp.h>

namespace pagepool::server {

struct DaemonOptions {
  std::string listen = "127.0.0.1:50051";         // gRPC address; port 0 picks a free one
  std::string metrics_listen = "127.0.0.1:9464";  // "" or "off": no /metrics endpoint
  double memory_gib = 4;                          // simulated physical memory
  uint32_t max_devices = 64;
  uint32_t max_pools = 1024;
  uint32_t max_pages_per_call = 65536;
  uint32_t max_message_bytes = 16 << 20;  // largest gRPC message, either direction
  std::string tls_cert;                   // PEM files; both or neither (plaintext)
  std::string tls_key;
  // PEM file of the CA that signs client certificates: mutual TLS, every client must present a
  // certificate it signed. REQUIRES tls_cert and tls_key.
  std::string tls_client_ca;
  // File holding the bearer token every PagePoolService call must carry ("": none needed).
  std::string auth_token_file;
  uint32_t max_streams = 1024;            // streams open at once, in all (0: no limit)
  uint32_t max_streams_per_peer = 256;    // streams open at once per client address (0: no limit)
  uint64_t max_held_per_stream = 262144;  // pages one Traffic stream may hold (0: no limit)
  uint32_t max_watch_queue = 65536;       // events queued per WatchEvents watcher (>= 1)
  uint32_t metrics_max_connections = 16;  // /metrics connections open at once (>= 1)
  // Each connection is pinged every keepalive_ms; a peer that does not answer within keepalive_ms
  // is disconnected (0: no pings).
  uint32_t keepalive_ms = 30000;
  uint32_t shutdown_grace_ms = 2000;  // time calls in flight get at shutdown
  bool handle_signals = true;         // false in tests: stop with RequestStop()
};

class Daemon {
 public:
  // Builds the runtime, binds the gRPC and metrics addresses and starts serving. Messages about the
  // daemon's life go to `log` (stdout in pagepoold). INVALID_ARGUMENT for bad options,
  // UNAVAILABLE when an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& options,
                                                       std::ostream* log);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs the io_context until SIGINT/SIGTERM or RequestStop(), shuts down, prints the summary.
  // Returns the process exit code (0). Context: the thread that called Start.
  int Run();
  // Asks Run() to shut down. Context: any thread.
  void RequestStop();

  int grpc_port() const { return grpc_port_; }
  uint16_t metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  const RpcStats& rpc_stats() const { return stats_; }
  // The Prometheus text the endpoint serves. Context: any thread.
  std::string RenderMetrics();
  // The summary printed at shutdown (valid after Run returns).
  const std::string& summary() const { return summary_; }

 private:
  Daemon(const DaemonOptions& options, std::ostream* log);
  // The steps of Start, in order; each fails as Start says.
  absl::Status StartRuntime();
  absl::Status StartGrpc();
  absl::Status StartMetrics();
  void WatchSignals();
  // Runs (runtime_->*tick)() every `period` on `timer` until shutdown: the 1 s release-retry tick
  // and the 10 ms lazy flush-queue timer. Context: the io_context thread (or before it runs).
  void ArmTimer(boost::asio::steady_timer& timer, std::chrono::milliseconds period,
                void (Runtime::*tick)());
  void Shutdown();  // Context: the io_context thread.
  // The summary printed at shutdown, from the teardown's report and the RPC counters.
  std::string Summary(const ShutdownReport& report) const;

  const DaemonOptions options_;
  std::ostream* const log_;
  RpcStats stats_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<PagePoolServiceImpl> service_;
  std::unique_ptr<UnknownMethodService> unknown_method_;
  std::unique_ptr<grpc::Server> server_;
  int grpc_port_ = 0;
  boost::asio::io_context io_;
  boost::asio::signal_set signals_;
  boost::asio::steady_timer tick_;
  boost::asio::steady_timer flush_tick_;
  boost::asio::steady_timer trim_tick_;
  std::unique_ptr<MetricsHttpServer> metrics_;
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point started_;
  std::string summary_;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_DAEMON_H_
