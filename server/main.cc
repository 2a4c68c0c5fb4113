// File: server/main.cc
//
// pagepoold: parses flags (each with a PAGEPOOLD_* environment twin) and runs the Daemon.
#include <malloc.h>

#include <cstdlib>
#include <iostream>

#include "absl/synchronization/mutex.h"
#include "server/daemon.h"
#include <CLI/CLI.hpp>

namespace {

// Every flag of pagepoold, each with its PAGEPOOLD_* environment twin, into `o` (and
// `malloc_arenas`, a setting of the process rather than of the daemon).
void AddFlags(CLI::App& app, pagepool::server::DaemonOptions& o, uint32_t& malloc_arenas) {
  app.add_option("--listen", o.listen, "gRPC address host:port (port 0: any free port)")
      ->envname("PAGEPOOLD_LISTEN")
      ->capture_default_str();
  app.add_option("--metrics-listen", o.metrics_listen,
                 "Prometheus /metrics address host:port; \"\" or \"off\" disables it")
      ->envname("PAGEPOOLD_METRICS_LISTEN")
      ->capture_default_str();
  app.add_option("--memory-gib", o.memory_gib, "simulated physical memory in GiB")
      ->envname("PAGEPOOLD_MEMORY_GIB")
      ->capture_default_str();
  app.add_option("--max-devices", o.max_devices, "devices that may be created")
      ->envname("PAGEPOOLD_MAX_DEVICES")
      ->capture_default_str();
  app.add_option("--max-pools", o.max_pools, "pools that may exist at once")
      ->envname("PAGEPOOLD_MAX_POOLS")
      ->capture_default_str();
  app.add_option("--max-pages-per-call", o.max_pages_per_call,
                 "pages in one Allocate/Recycle/Return call or Traffic batch")
      ->envname("PAGEPOOLD_MAX_PAGES_PER_CALL")
      ->capture_default_str();
  app.add_option("--max-message-bytes", o.max_message_bytes, "largest gRPC message")
      ->envname("PAGEPOOLD_MAX_MESSAGE_BYTES")
      ->capture_default_str();
  app.add_option("--tls-cert", o.tls_cert, "PEM certificate chain (with --tls-key: TLS)")
      ->envname("PAGEPOOLD_TLS_CERT");
  app.add_option("--tls-key", o.tls_key, "PEM private key")->envname("PAGEPOOLD_TLS_KEY");
  app.add_option("--tls-client-ca", o.tls_client_ca,
                 "PEM CA file: mutual TLS, clients must present a certificate it signed")
      ->envname("PAGEPOOLD_TLS_CLIENT_CA");
  app.add_option("--auth-token-file", o.auth_token_file,
                 "file holding a bearer token every PagePoolService call must carry")
      ->envname("PAGEPOOLD_AUTH_TOKEN_FILE");
  app.add_option("--max-streams", o.max_streams, "streams open at once, in all (0: no limit)")
      ->envname("PAGEPOOLD_MAX_STREAMS")
      ->capture_default_str();
  app.add_option("--max-streams-per-peer", o.max_streams_per_peer,
                 "streams open at once per client address (0: no limit)")
      ->envname("PAGEPOOLD_MAX_STREAMS_PER_PEER")
      ->capture_default_str();
  app.add_option("--max-held-per-stream", o.max_held_per_stream,
                 "pages one Traffic stream may hold (0: no limit)")
      ->envname("PAGEPOOLD_MAX_HELD_PER_STREAM")
      ->capture_default_str();
  app.add_option("--max-watch-queue", o.max_watch_queue,
                 "events queued per WatchEvents watcher before its stream is ended")
      ->envname("PAGEPOOLD_MAX_WATCH_QUEUE")
      ->capture_default_str();
  app.add_option("--metrics-max-connections", o.metrics_max_connections,
                 "/metrics connections open at once")
      ->envname("PAGEPOOLD_METRICS_MAX_CONNECTIONS")
      ->capture_default_str();
  app.add_option("--keepalive-ms", o.keepalive_ms,
                 "ping each connection this often; a peer that does not answer within it is "
                 "disconnected (0: no pings)")
      ->envname("PAGEPOOLD_KEEPALIVE_MS")
      ->capture_default_str();
  app.add_option("--shutdown-grace-ms", o.shutdown_grace_ms,
                 "at SIGINT/SIGTERM, time calls in flight get before they are cancelled")
      ->envname("PAGEPOOLD_SHUTDOWN_GRACE_MS")
      ->capture_default_str();
  app.add_option("--malloc-arenas", malloc_arenas,
                 "glibc malloc arenas (M_ARENA_MAX); 0: glibc's default of 8 per core. gRPC runs "
                 "calls on many threads, and with an arena per thread the memory one thread frees "
                 "is not reused by the next: RSS creeps up under churn (RELIABILITY.md, soak)")
      ->envname("PAGEPOOLD_MALLOC_ARENAS")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  pagepool::server::DaemonOptions o;
  uint32_t malloc_arenas = 1;
  CLI::App app{"pagepoold: simulated NIC page pools over a modelled IOMMU, driven over gRPC"};
  AddFlags(app, o, malloc_arenas);
  CLI11_PARSE(app, argc, argv);
  // Before any thread starts: an arena is bound to a thread at its first malloc. A malloc other
  // than glibc's (a sanitizer's) refuses M_ARENA_MAX: it has its own per-thread caches, and the
  // daemon runs on as it is; only an explicit request is told so.
  if (malloc_arenas != 0 && mallopt(M_ARENA_MAX, int(malloc_arenas)) != 1 &&
      app.count("--malloc-arenas") != 0) {
    std::cerr << "pagepoold: --malloc-arenas " << malloc_arenas
              << " ignored: this malloc does not take M_ARENA_MAX (a sanitizer's?)" << std::endl;
  }
  // CLI11 treats an empty environment variable as unset; an empty PAGEPOOLD_METRICS_LISTEN means
  // "no metrics endpoint", as an empty --metrics-listen does.
  const char* metrics_env = std::getenv("PAGEPOOLD_METRICS_LISTEN");
  if (app.count("--metrics-listen") == 0 && metrics_env != nullptr && *metrics_env == '\0') {
    o.metrics_listen.clear();
  }

  // Debian's abseil is built with Mutex deadlock detection on (a lock-graph update on every
  // absl::Mutex lock, gRPC's internal mutexes included); the daemon does not pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  auto daemon = pagepool::server::Daemon::Start(o, &std::cout);
  if (!daemon.ok()) {
    std::cerr << "pagepoold: " << daemon.status().message() << std::endl;
    return 1;
  }
  std::cout << "pagepoold: serving gRPC on " << o.listen << " (port " << (*daemon)->grpc_port()
            << ")";
  if ((*daemon)->metrics_port() != 0) {
    std::cout << ", metrics on http port " << (*daemon)->metrics_port() << "/metrics";
  }
  std::cout << std::endl;
  return (*daemon)->Run();
}
