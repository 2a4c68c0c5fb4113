// null_server: a pagepool.v1.PagePoolService that does no page work at all, for measuring how much
// of pagepoold's Traffic throughput the stream itself costs. CreateDevice and CreatePool answer
// id 1; Traffic answers every batch with `allocate` made-up pages (handles counting up) and counts
// the recycled and returned pages as done, so `ppctl traffic` runs against it unchanged; GetPool,
// GetDomain, DestroyPool and UnbindDevice answer zeros. Everything else is UNIMPLEMENTED.
//
// Traffic keeps reading while answers are being written (up to kMaxQueued answers queued), so a
// client that pipelines batches is not serialised here.
//
//   null_server [--listen 127.0.0.1:0]    prints "null_server: serving on PORT", runs until SIGTERM
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "base/mutex.h"
#include "pagepool/v1/pagepool.grpc.pb.h"
#include <grpcpp/grpcpp.h>

namespace pagepool::bench {
namespace {

namespace v1 = ::pagepool::v1;

constexpr size_t kMaxQueued = 64;

// One Traffic stream: at most one read and one write outstanding (gRPC's rule), answers queued in
// between. OnReadDone and OnWriteDone may run at once on different threads.
class NullTraffic final : public grpc::ServerBidiReactor<v1::TrafficRequest, v1::TrafficResponse> {
 public:
  NullTraffic() { StartRead(&req_); }

  void OnReadDone(bool ok) override {
    base::MutexLock l(&mu_);
    if (!ok) {
      reading_ = false;
      MaybeFinishLocked();
      return;
    }
    queue_.emplace_back();
    Answer(req_, &queue_.back());
    if (!writing_) StartNextWriteLocked();
    if (queue_.size() < kMaxQueued) {
      StartRead(&req_);
    } else {
      read_paused_ = true;
    }
  }

  void OnWriteDone(bool ok) override {
    base::MutexLock l(&mu_);
    queue_.pop_front();
    writing_ = false;
    if (!ok) {
      failed_ = true;
      MaybeFinishLocked();
      return;
    }
    if (read_paused_) {
      read_paused_ = false;
      StartRead(&req_);
    }
    if (!queue_.empty()) {
      StartNextWriteLocked();
    } else {
      MaybeFinishLocked();
    }
  }

  void OnDone() override { delete this; }

 private:
  void Answer(const v1::TrafficRequest& req, v1::TrafficResponse* resp) {
    resp->set_seq(req.seq());
    for (uint32_t i = 0; i < req.allocate(); ++i) {
      v1::Page* p = resp->add_allocated();
      p->mutable_handle()->set_frame(++next_frame_);
      p->mutable_handle()->set_generation(1);
      p->set_dma_addr(next_frame_ << 12);
    }
    resp->set_recycled_cached(static_cast<uint64_t>(req.recycle_size()));
    resp->set_returned(static_cast<uint64_t>(req.return_pages_size()));
  }
  void StartNextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    StartWrite(&queue_.front());
  }
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (failed_ || (!reading_ && queue_.empty())) {
      finished_ = true;
      Finish(failed_ ? grpc::Status::CANCELLED : grpc::Status::OK);
    }
  }

  base::Mutex mu_;
  v1::TrafficRequest req_;  // the read in flight fills it; only touched between reads
  std::deque<v1::TrafficResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = true;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_frame_ = 0;
};

class NullService final : public v1::PagePoolService::CallbackService {
  grpc::ServerUnaryReactor* CreateDevice(grpc::CallbackServerContext* ctx,
                                         const v1::CreateDeviceRequest* req,
                                         v1::CreateDeviceResponse* resp) override {
    resp->mutable_device()->set_id(1);
    resp->mutable_device()->set_name(req->name());
    resp->mutable_device()->set_ifindex(1);
    resp->mutable_device()->set_state(v1::DEVICE_STATE_BOUND);
    return Ok(ctx);
  }
  grpc::ServerUnaryReactor* CreatePool(grpc::CallbackServerContext* ctx,
                                       const v1::CreatePoolRequest* req,
                                       v1::CreatePoolResponse* resp) override {
    resp->mutable_pool()->set_id(1);
    resp->mutable_pool()->set_ifindex(1);
    return Ok(ctx);
  }
  grpc::ServerUnaryReactor* GetPool(grpc::CallbackServerContext* ctx, const v1::GetPoolRequest* req,
                                    v1::GetPoolResponse* resp) override {
    resp->mutable_pool()->set_id(req->pool_id());
    return Ok(ctx);
  }
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* ctx,
                                      const v1::GetDomainRequest* req,
                                      v1::GetDomainResponse* resp) override {
    resp->mutable_domain()->set_device_id(req->device_id());
    return Ok(ctx);
  }
  grpc::ServerUnaryReactor* DestroyPool(grpc::CallbackServerContext* ctx,
                                        const v1::DestroyPoolRequest* req,
                                        v1::DestroyPoolResponse* resp) override {
    resp->set_pool_id(req->pool_id());
    return Ok(ctx);
  }
  grpc::ServerUnaryReactor* UnbindDevice(grpc::CallbackServerContext* ctx,
                                         const v1::UnbindDeviceRequest* req,
                                         v1::UnbindDeviceResponse* resp) override {
    return Ok(ctx);
  }
  grpc::ServerBidiReactor<v1::TrafficRequest, v1::TrafficResponse>* Traffic(
      grpc::CallbackServerContext* ctx) override {
    return new NullTraffic();
  }

  static grpc::ServerUnaryReactor* Ok(grpc::CallbackServerContext* ctx) {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }
};

volatile std::sig_atomic_t g_stop = 0;

}  // namespace
}  // namespace pagepool::bench

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else {
      std::fprintf(stderr, "usage: null_server [--listen HOST:PORT]\n");
      return 2;
    }
  }
  pagepool::bench::NullService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "null_server: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::printf("null_server: serving on %s (port %d)\n", listen.c_str(), port);
  std::fflush(stdout);
  std::signal(SIGTERM, [](int) { pagepool::bench::g_stop = 1; });
  std::signal(SIGINT, [](int) { pagepool::bench::g_stop = 1; });
  while (!pagepool::bench::g_stop) pause();
  server->Shutdown();
  return 0;
}
