// File: tests/support/daemon_harness.h
//
// InProcessDaemon: a pagepoold Daemon on 127.0.0.1:0 (the port is read back), running its
// io_context on a thread of its own, with signals left alone; plus a Client connected to it.
// Stop() (or the destructor) shuts it down as SIGTERM would and keeps the printed summary.
//
// Thread safety: one test thread drives it.
#ifndef PAGEPOOL_TESTS_SUPPORT_DAEMON_HARNESS_H_
#define PAGEPOOL_TESTS_SUPPORT_DAEMON_HARNESS_H_

#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "server/daemon.h"

namespace pagepool::testing {

class InProcessDaemon {
 public:
  // Starts a daemon with `options`, forcing listen to 127.0.0.1:0, signals off and, unless the
  // caller set metrics_listen, metrics off.
  static absl::StatusOr<std::unique_ptr<InProcessDaemon>> Start(
      server::DaemonOptions options = DefaultOptions()) {
    options.listen = "127.0.0.1:0";
    options.handle_signals = false;
    auto d = std::unique_ptr<InProcessDaemon>(new InProcessDaemon());
    auto daemon = server::Daemon::Start(options, &d->log_);
    if (!daemon.ok()) return daemon.status();
    d->daemon_ = std::move(*daemon);
    d->address_ = "127.0.0.1:" + std::to_string(d->daemon_->grpc_port());
    auto client = client::Client::Connect(d->address_);
    if (!client.ok()) return client.status();
    d->client_ = std::move(*client);
    d->thread_ = std::thread([p = d.get()] { p->exit_code_ = p->daemon_->Run(); });
    return d;
  }

  static server::DaemonOptions DefaultOptions() {
    server::DaemonOptions o;
    o.metrics_listen = "off";
    o.memory_gib = 0.25;  // 64 Ki frames: small enough to exhaust in a test
    o.shutdown_grace_ms = 500;
    return o;
  }

  ~InProcessDaemon() { Stop(); }

  // Shuts the daemon down (as SIGTERM does) and waits for it. Idempotent.
  void Stop() {
    if (!thread_.joinable()) return;
    client_.reset();
    daemon_->RequestStop();
    thread_.join();
  }

  client::Client& client() { return *client_; }
  server::Daemon& daemon() { return *daemon_; }
  const std::string& address() const { return address_; }
  int exit_code() const { return exit_code_; }
  // Everything the daemon printed (the summary after Stop).
  std::string log() const { return log_.str(); }

 private:
  InProcessDaemon() = default;
  std::ostringstream log_;
  std::unique_ptr<server::Daemon> daemon_;
  std::unique_ptr<client::Client> client_;
  std::string address_;
  std::thread thread_;
  int exit_code_ = -1;
};

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_SUPPORT_DAEMON_HARNESS_H_
