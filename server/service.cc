// File: server/service.cc
#include "server/service.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/mutex.h"
#include "google/protobuf/io/coded_stream.h"
#include "server/status_convert.h"
#include "server/watch_reactor.h"

namespace pagepool::server {
namespace v1 = ::pagepool::v1;
namespace {

constexpr size_t kStreamBatch = 256;

// Bytes an entry of `size` bytes takes in a repeated message field (tag + length + payload).
size_t FieldBytes(size_t size) {
  return 1 + google::protobuf::io::CodedOutputStream::VarintSize64(size) + size;
}

// Hands allocated pages that cannot reach the client (their answer is above the message limit)
// back to the pool, so that they are not left in flight with nobody holding their handles.
void GiveBack(Runtime* runtime, uint64_t pool_id,
              const google::protobuf::RepeatedPtrField<v1::Page>& pages) {
  google::protobuf::RepeatedPtrField<v1::PageHandle> handles;
  google::protobuf::RepeatedPtrField<v1::FragHandle> frags;
  for (const v1::Page& p : pages) {
    if (p.has_frag()) {
      *frags.Add() = p.frag();
    } else {
      *handles.Add() = p.handle();
    }
  }
  v1::ReturnResponse ignored;
  (void)runtime->Return(pool_id, handles, frags, &ignored);
}

// RESOURCE_EXHAUSTED for an answer of `pages` pages and `bytes` bytes above `limit`.
absl::Status AnswerTooBig(const char* call, int pages, size_t bytes, uint32_t limit) {
  return absl::ResourceExhaustedError(
      absl::StrCat(call, ": the answer with ", pages, " pages would be ", bytes,
                   " bytes, above the message limit of ", limit,
                   " bytes (--max-message-bytes); the pages were given back, ask for fewer"));
}

// Parses a raw request; INVALID_ARGUMENT naming the call and the message type when it does not.
template <typename Req>
absl::Status ParseRequest(const char* name, const grpc::ByteBuffer* in, Req* req) {
  grpc::ByteBuffer buf(*in);  // a reference to the same slices; Deserialize consumes it
  if (grpc::SerializationTraits<Req>::Deserialize(&buf, req).ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": the request is not a valid ", Req::descriptor()->full_name(),
                   " (it does not parse: not protobuf, or a string field that is not UTF-8)"));
}

// Serializes `m` into `out` for a raw write.
void Serialize(const google::protobuf::Message& m, grpc::ByteBuffer* out) {
  bool own = false;
  out->Clear();
  (void)grpc::SerializationTraits<google::protobuf::Message>::Serialize(m, out, &own);
}

// A server stream refused before it started (no token, no stream slot, a request that does not
// parse).
class RefusedWriter final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  RefusedWriter(RpcStats* stats, RpcMethod method, const absl::Status& status) {
    stats->OnFinished(method, status.code());
    Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// A Traffic stream refused before it started (no token, no stream slot).
class RefusedBidi final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  RefusedBidi(RpcStats* stats, const absl::Status& status) {
    stats->OnFinished(RpcMethod::kTraffic, status.code());
    Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// ListInflight: walks the pool's in-flight index a chunk at a time (Runtime::ListInflight: at most
// Runtime::kInflightChunk compact records of 32 bytes, converted to messages only as they are
// sent), writes each chunk in messages of kStreamBatch entries (fewer when the message limit is
// small), and reads the next chunk only once the previous one has been written, so a listing holds
// one chunk and one message whatever the pool's size. Stops after the request's limit (0: none)
// and finishes with OK; a failed lookup finishes at once with its status.
class InflightWriter final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  InflightWriter(Runtime* runtime, RpcStats* stats, StreamLimiter::Slot slot,
                 const v1::ListInflightRequest& req, uint32_t max_message_bytes)
      : runtime_(runtime),
        stats_(stats),
        slot_(std::move(slot)),
        pool_id_(req.pool_id()),
        limit_(req.limit()),
        cursor_(req.start_index_id()),
        max_message_bytes_(max_message_bytes) {
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Done(absl::CancelledError("client went away"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (pos_ >= items_.size()) {  // the chunk is sent: read the next one, if any is left
      if (!items_.empty() && (cursor_.done() || (limit_ != 0 && listed_ >= limit_))) {
        Done(absl::OkStatus());
        return;
      }
      const size_t want =
          limit_ == 0 ? Runtime::kInflightChunk
                      : size_t(std::min<uint64_t>(limit_ - listed_, Runtime::kInflightChunk));
      absl::Status status = runtime_->ListInflight(pool_id_, &cursor_, want, &items_);
      pos_ = 0;
      listed_ += items_.size();
      if (!status.ok() || items_.empty()) {  // a failed lookup, or nothing (left) to send
        Done(status);
        return;
      }
    }
    resp_.Clear();
    // Up to kStreamBatch entries, and no more than fit in the message limit (at least one).
    size_t end = std::min(items_.size(), pos_ + kStreamBatch);
    size_t bytes = 0;
    for (size_t n = 0; pos_ < end; ++pos_, ++n) {
      const InflightRecord& r = items_[pos_];
      v1::InflightPage page;
      page.set_index_id(r.index_id);
      page.mutable_handle()->set_frame(r.frame);
      page.mutable_handle()->set_generation(r.generation);
      page.set_dma_addr(r.dma_addr);
      page.set_pp_ref_count(r.pp_ref_count);
      page.set_fragmented(r.fragmented);
      page.set_frag_refs(r.frag_refs);
      size_t more = FieldBytes(page.ByteSizeLong());
      if (n > 0 && max_message_bytes_ != 0 && bytes + more > max_message_bytes_) break;
      bytes += more;
      *resp_.add_pages() = std::move(page);
    }
    Serialize(resp_, &out_);
    StartWrite(&out_);
  }
  void Done(const absl::Status& status) {
    stats_->OnFinished(RpcMethod::kListInflight, status.code());
    Finish(ToGrpcStatus(status));
  }

  Runtime* const runtime_;
  RpcStats* const stats_;
  StreamLimiter::Slot slot_;  // the stream's place (--max-streams), released with the reactor
  const uint64_t pool_id_;
  const uint64_t limit_;  // 0: no limit
  Runtime::InflightCursor cursor_;
  const uint32_t max_message_bytes_;
  std::vector<InflightRecord> items_;  // the chunk being sent
  size_t pos_ = 0;                     // its next record to send
  uint64_t listed_ = 0;                // records read from the index so far
  v1::ListInflightResponse resp_;
  grpc::ByteBuffer out_;
};

// Traffic: read a batch, run it, queue its answer, and read the next batch while the answers are
// being written, so a client that keeps several batches in flight (ppctl traffic --window) is not
// held to one round trip per batch. Batches of one stream are run one at a time, in order (one read
// is outstanding at most); answers go out in the same order. At most kMaxQueuedAnswers answers wait
// for the client: past that the stream stops reading until it has taken some (flow control). The
// request message is reused across batches so that repeated fields keep their allocations. The
// method is raw (ByteBuffers): the typed callback API reports a message that does not parse exactly
// as a client half-close, so a malformed batch ended the stream with OK; here it ends it with
// INVALID_ARGUMENT naming the message, once the answers before it are written.
//
// Thread safety: OnReadDone and OnWriteDone may run at once on different gRPC threads; the queue
// and the stream's state are under mu_, and gRPC calls are made after dropping it.
class TrafficReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static constexpr size_t kMaxQueuedAnswers = 32;

  TrafficReactor(Runtime* runtime, RpcStats* stats, StreamLimiter::Slot slot,
                 uint32_t max_message_bytes, uint64_t max_held)
      : runtime_(runtime),
        stats_(stats),
        slot_(std::move(slot)),
        max_message_bytes_(max_message_bytes),
        cache_(max_held) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // client half-closed (or went away): finish once the answers are written
      Act(Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        EndLocked(grpc::Status::OK, absl::StatusCode::kOk);
      }));
      return;
    }
    ++messages_;
    req_.Clear();
    grpc::Status parsed = grpc::SerializationTraits<v1::TrafficRequest>::Deserialize(&in_, &req_);
    if (!parsed.ok()) {
      grpc::Status bad(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat(
              "Traffic: message #", messages_, " is not a valid pagepool.v1.TrafficRequest (",
              parsed.error_message().empty() ? "it does not parse" : parsed.error_message(),
              "); the batches before it were done"));
      Act(Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        EndLocked(bad, absl::StatusCode::kInvalidArgument);
      }));
      return;
    }
    {
      base::MutexLock l(&mu_);
      if (ending_) return;  // the client went away while this batch was on its way: drop it
    }
    grpc::ByteBuffer answer;
    grpc::Status ser = RunBatch(&answer);
    Act(Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (!ser.ok()) {
        EndLocked(ser, static_cast<absl::StatusCode>(ser.error_code()));
        return;
      }
      answers_.push_back(std::move(answer));
      if (answers_.size() < kMaxQueuedAnswers) {
        read_next_ = true;
      } else {
        read_paused_ = true;
      }
    }));
  }

  void OnWriteDone(bool ok) override {
    Act(Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      writing_ = false;
      answers_.pop_front();
      if (!ok) {
        answers_.clear();
        EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "Traffic: client went away"),
                  absl::StatusCode::kCancelled);
        return;
      }
      if (read_paused_ && !ending_) {
        read_paused_ = false;
        read_next_ = true;
      }
    }));
  }

  void OnDone() override { delete this; }

 private:
  // What to do after dropping mu_: at most one of each gRPC call.
  struct Actions {
    bool read = false;
    const grpc::ByteBuffer* write = nullptr;
    std::optional<grpc::Status> finish;
  };

  // Runs req_ through the runtime and serializes its answer (refusing pages whose answer would be
  // above the message limit, as for any other failed allocation).
  grpc::Status RunBatch(grpc::ByteBuffer* answer) {
    resp_.Clear();
    uint64_t ops = runtime_->Traffic(req_, &resp_, &cache_);
    if (max_message_bytes_ != 0 && resp_.allocated_size() > 0) {
      size_t bytes = resp_.ByteSizeLong();
      if (bytes > max_message_bytes_) {
        int n = resp_.allocated_size();
        GiveBack(runtime_, req_.pool_id(), resp_.allocated());
        cache_.Forget(static_cast<uint64_t>(n));
        resp_.clear_allocated();
        ops -= static_cast<uint64_t>(n);
        absl::Status s = AnswerTooBig("Traffic", n, bytes, max_message_bytes_);
        if (resp_.errors() == 0) {
          resp_.set_error_code(static_cast<int>(s.code()));
          resp_.set_error_message(std::string(s.message()));
        }
        resp_.set_errors(resp_.errors() + 1);
      }
    }
    stats_->OnTrafficBatch(ops, resp_.errors());
    bool own = false;
    return grpc::SerializationTraits<v1::TrafficResponse>::Serialize(resp_, answer, &own);
  }

  // Applies `change` under mu_, then decides the next write and the finish.
  template <typename Fn>
  Actions Update(Fn change) {
    base::MutexLock l(&mu_);
    change();
    Actions a;
    a.read = read_next_;
    read_next_ = false;
    if (!writing_ && !answers_.empty() && !finished_) {
      writing_ = true;
      a.write = &answers_.front();  // deque: stays put while later answers are pushed
    }
    if (ending_ && !writing_ && answers_.empty() && !finished_) {
      finished_ = true;
      stats_->OnFinished(RpcMethod::kTraffic, end_code_);
      a.finish = end_status_;
    }
    return a;
  }

  void Act(const Actions& a) {
    if (a.write != nullptr) StartWrite(a.write);
    if (a.read) {
      in_.Clear();
      StartRead(&in_);
    }
    if (a.finish) Finish(*a.finish);
  }

  // The stream ends with `status` once the queued answers are written (at once if none are).
  void EndLocked(const grpc::Status& status, absl::StatusCode code)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ending_) return;
    ending_ = true;
    end_status_ = status;
    end_code_ = code;
  }

  Runtime* const runtime_;
  RpcStats* const stats_;
  StreamLimiter::Slot slot_;  // the stream's place (--max-streams), released with the reactor
  const uint32_t max_message_bytes_;
  // Touched only by OnReadDone, which never runs twice at once (one read is outstanding).
  uint64_t messages_ = 0;
  grpc::ByteBuffer in_;
  v1::TrafficRequest req_;
  v1::TrafficResponse resp_;
  Runtime::TrafficCache cache_;

  base::Mutex mu_;
  std::deque<grpc::ByteBuffer> answers_ ABSL_GUARDED_BY(mu_);  // front: being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_next_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status end_status_ ABSL_GUARDED_BY(mu_);
  absl::StatusCode end_code_ ABSL_GUARDED_BY(mu_) = absl::StatusCode::kOk;
};

// DumpPageTable: one message at a time, each a fresh lockless walk of [cursor, end) for up to
// kStreamBatch leaves (fewer when the message limit is small), the cursor moving past the last leaf
// sent. Memory is one message whatever the size of the table.
class DumpReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // Largest PageTableEntry on the wire (iova, phys and size varints, prot, dirty, accessed) plus
  // its tag and length in the response.
  static constexpr size_t kMaxEntryBytes = 40;

  DumpReactor(Runtime* runtime, RpcStats* stats, StreamLimiter::Slot slot,
              const v1::DumpPageTableRequest& req, uint32_t max_message_bytes)
      : runtime_(runtime),
        stats_(stats),
        slot_(std::move(slot)),
        device_id_(req.device_id()),
        cursor_(req.start()),
        end_(req.end()),
        limit_(req.limit()),
        walk_cache_(req.walk_cache()),
        per_message_(max_message_bytes == 0 ? kStreamBatch
                                            : std::clamp<size_t>(max_message_bytes / kMaxEntryBytes,
                                                                 1, kStreamBatch)) {
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Done(absl::CancelledError("client went away"));
      return;
    }
    if (walked_) {
      Done(absl::OkStatus());
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    uint64_t want = per_message_;
    if (limit_ != 0) want = std::min<uint64_t>(want, limit_ - sent_);
    entries_.clear();
    absl::Status s = runtime_->DumpPageTable(device_id_, cursor_, end_, want, &entries_);
    if (!s.ok()) {
      Done(s);
      return;
    }
    if (end_ == 0) {  // the end of the address space: resolve it once, for the next walks
      v1::DomainInfo dom;
      if (absl::Status d = runtime_->GetDomain(device_id_, &dom); !d.ok()) {
        Done(d);
        return;
      }
      end_ = dom.address_width() >= 64 ? ~uint64_t{0} : uint64_t{1} << dom.address_width();
    }
    resp_.Clear();
    if (walk_cache_) {  // the first message carries the walk cache (bounded: 64 per level)
      walk_cache_ = false;
      std::vector<v1::WalkCacheEntry> walk;
      if (absl::Status w = runtime_->DumpWalkCache(device_id_, &walk); !w.ok()) {
        Done(w);
        return;
      }
      for (v1::WalkCacheEntry& e : walk) *resp_.add_walk_cache() = std::move(e);
    }
    if (entries_.empty()) {  // nothing (more) in the range: the stream ends
      if (resp_.walk_cache_size() == 0) {
        Done(absl::OkStatus());
        return;
      }
      walked_ = true;  // only the walk cache to send
      Serialize(resp_, &out_);
      StartWrite(&out_);
      return;
    }
    sent_ += entries_.size();
    const v1::PageTableEntry& last = entries_.back();
    const uint64_t next = last.iova() + last.size();
    walked_ = entries_.size() < want || (limit_ != 0 && sent_ >= limit_) || next <= last.iova() ||
              next >= end_;
    cursor_ = next;
    for (v1::PageTableEntry& e : entries_) *resp_.add_entries() = std::move(e);
    Serialize(resp_, &out_);
    StartWrite(&out_);
  }
  void Done(const absl::Status& status) {
    stats_->OnFinished(RpcMethod::kDumpPageTable, status.code());
    Finish(ToGrpcStatus(status));
  }

  Runtime* const runtime_;
  RpcStats* const stats_;
  StreamLimiter::Slot slot_;  // the stream's place (--max-streams), released with the reactor
  const uint64_t device_id_;
  uint64_t cursor_;
  uint64_t end_;
  const uint64_t limit_;
  bool walk_cache_;  // the walk cache is still to be sent (DumpPageTableRequest.walk_cache)
  const size_t per_message_;
  uint64_t sent_ = 0;
  bool walked_ = false;
  std::vector<v1::PageTableEntry> entries_;
  v1::DumpPageTableResponse resp_;
  grpc::ByteBuffer out_;
};

}  // namespace

grpc::ServerUnaryReactor* PagePoolServiceImpl::FinishUnary(grpc::CallbackServerContext* ctx,
                                                           RpcMethod method,
                                                           const absl::Status& status) {
  stats_->OnFinished(method, status.code());
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

template <typename Req, typename Resp, typename Fn>
grpc::ServerUnaryReactor* PagePoolServiceImpl::Unary(grpc::CallbackServerContext* ctx,
                                                     RpcMethod method, const char* name,
                                                     const grpc::ByteBuffer* in,
                                                     grpc::ByteBuffer* out, Fn fn) {
  if (absl::Status t = token_.Check(*ctx, name); !t.ok()) return FinishUnary(ctx, method, t);
  Req req;
  Resp resp;
  if (absl::Status p = ParseRequest(name, in, &req); !p.ok()) return FinishUnary(ctx, method, p);
  absl::Status s = fn(req, &resp);
  if (s.ok()) {
    bool own = false;
    grpc::Status ser = grpc::SerializationTraits<Resp>::Serialize(resp, out, &own);
    if (!ser.ok()) {
      s = absl::InternalError(
          absl::StrCat(name, ": cannot serialize the answer: ", ser.error_message()));
    }
  }
  return FinishUnary(ctx, method, s);
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::CreateDevice(grpc::CallbackServerContext* ctx,
                                                            const grpc::ByteBuffer* in,
                                                            grpc::ByteBuffer* out) {
  return Unary<v1::CreateDeviceRequest, v1::CreateDeviceResponse>(
      ctx, RpcMethod::kCreateDevice, "CreateDevice", in, out, [&](const auto& req, auto* resp) {
        return runtime_->CreateDevice(req, resp->mutable_device());
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::GetDevice(grpc::CallbackServerContext* ctx,
                                                         const grpc::ByteBuffer* in,
                                                         grpc::ByteBuffer* out) {
  return Unary<v1::GetDeviceRequest, v1::GetDeviceResponse>(
      ctx, RpcMethod::kGetDevice, "GetDevice", in, out, [&](const auto& req, auto* resp) {
        return runtime_->GetDevice(req.device_id(), resp->mutable_device());
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::ListDevices(grpc::CallbackServerContext* ctx,
                                                           const grpc::ByteBuffer* in,
                                                           grpc::ByteBuffer* out) {
  return Unary<v1::ListDevicesRequest, v1::ListDevicesResponse>(
      ctx, RpcMethod::kListDevices, "ListDevices", in, out, [&](const auto& req, auto* resp) {
        runtime_->ListDevices(resp);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::UnbindDevice(grpc::CallbackServerContext* ctx,
                                                            const grpc::ByteBuffer* in,
                                                            grpc::ByteBuffer* out) {
  return Unary<v1::UnbindDeviceRequest, v1::UnbindDeviceResponse>(
      ctx, RpcMethod::kUnbindDevice, "UnbindDevice", in, out,
      [&](const auto& req, auto* resp) { return runtime_->UnbindDevice(req.device_id(), resp); });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::DeleteDevice(grpc::CallbackServerContext* ctx,
                                                            const grpc::ByteBuffer* in,
                                                            grpc::ByteBuffer* out) {
  return Unary<v1::DeleteDeviceRequest, v1::DeleteDeviceResponse>(
      ctx, RpcMethod::kDeleteDevice, "DeleteDevice", in, out, [&](const auto& req, auto* resp) {
        return runtime_->DeleteDevice(req.device_id(), resp->mutable_device());
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::CreatePool(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* in,
                                                          grpc::ByteBuffer* out) {
  return Unary<v1::CreatePoolRequest, v1::CreatePoolResponse>(
      ctx, RpcMethod::kCreatePool, "CreatePool", in, out, [&](const auto& req, auto* resp) {
        return runtime_->CreatePool(
            req, resp->mutable_pool(),
            req.replaces_pool_id() != 0 ? resp->mutable_replaced() : nullptr);
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::GetPool(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  return Unary<v1::GetPoolRequest, v1::GetPoolResponse>(
      ctx, RpcMethod::kGetPool, "GetPool", in, out, [&](const auto& req, auto* resp) {
        return runtime_->GetPool(req.pool_id(), resp->mutable_pool());
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::ListPools(grpc::CallbackServerContext* ctx,
                                                         const grpc::ByteBuffer* in,
                                                         grpc::ByteBuffer* out) {
  return Unary<v1::ListPoolsRequest, v1::ListPoolsResponse>(
      ctx, RpcMethod::kListPools, "ListPools", in, out,
      [&](const auto& req, auto* resp) { return runtime_->ListPools(req.device_id(), resp); });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::DestroyPool(grpc::CallbackServerContext* ctx,
                                                           const grpc::ByteBuffer* in,
                                                           grpc::ByteBuffer* out) {
  return Unary<v1::DestroyPoolRequest, v1::DestroyPoolResponse>(
      ctx, RpcMethod::kDestroyPool, "DestroyPool", in, out, [&](const auto& req, auto* resp) {
        return runtime_->DestroyPool(req.pool_id(), resp, req.xdp_rxq_unreg());
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::Allocate(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* in,
                                                        grpc::ByteBuffer* out) {
  return Unary<v1::AllocateRequest, v1::AllocateResponse>(
      ctx, RpcMethod::kAllocate, "Allocate", in, out,
      [&](const v1::AllocateRequest& req, v1::AllocateResponse* resp) {
        absl::Status s =
            runtime_->Allocate(req.pool_id(), req.count(), req.frag_size(), resp->mutable_pages());
        if (s.ok() && max_message_bytes_ != 0) {
          size_t bytes = resp->ByteSizeLong();
          if (bytes > max_message_bytes_) {
            int n = resp->pages_size();
            GiveBack(runtime_, req.pool_id(), resp->pages());
            resp->Clear();
            s = AnswerTooBig("Allocate", n, bytes, max_message_bytes_);
          }
        }
        return s;
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::Recycle(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  return Unary<v1::RecycleRequest, v1::RecycleResponse>(
      ctx, RpcMethod::kRecycle, "Recycle", in, out, [&](const auto& req, auto* resp) {
        return runtime_->Recycle(req.pool_id(), req.pages(), req.frags(), req.napi_local(), resp);
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::Return(grpc::CallbackServerContext* ctx,
                                                      const grpc::ByteBuffer* in,
                                                      grpc::ByteBuffer* out) {
  return Unary<v1::ReturnRequest, v1::ReturnResponse>(
      ctx, RpcMethod::kReturn, "Return", in, out, [&](const auto& req, auto* resp) {
        return runtime_->Return(req.pool_id(), req.pages(), req.frags(), resp);
      });
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::RefFrag(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* in,
                                                       grpc::ByteBuffer* out) {
  return Unary<v1::RefFragRequest, v1::RefFragResponse>(
      ctx, RpcMethod::kRefFrag, "RefFrag", in, out, [&](const auto& req, auto* resp) {
        return runtime_->RefFrag(req.pool_id(), req.frags(), resp);
      });
}

absl::StatusOr<StreamLimiter::Slot> PagePoolServiceImpl::AdmitStream(
    grpc::CallbackServerContext* ctx, const char* name) {
  if (absl::Status t = token_.Check(*ctx, name); !t.ok()) return t;
  return streams_.Acquire(ctx->peer(), name);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* PagePoolServiceImpl::Traffic(
    grpc::CallbackServerContext* ctx) {
  auto slot = AdmitStream(ctx, "Traffic");
  if (!slot.ok()) return new RefusedBidi(stats_, slot.status());
  return new TrafficReactor(runtime_, stats_, *std::move(slot), max_message_bytes_,
                            options_.max_held_per_stream);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* PagePoolServiceImpl::ListInflight(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in) {
  auto slot = AdmitStream(ctx, "ListInflight");
  if (!slot.ok()) return new RefusedWriter(stats_, RpcMethod::kListInflight, slot.status());
  v1::ListInflightRequest req;
  if (absl::Status p = ParseRequest("ListInflight", in, &req); !p.ok()) {
    return new RefusedWriter(stats_, RpcMethod::kListInflight, p);
  }
  return new InflightWriter(runtime_, stats_, *std::move(slot), req, max_message_bytes_);
}

grpc::ServerUnaryReactor* PagePoolServiceImpl::GetDomain(grpc::CallbackServerContext* ctx,
                                                         const grpc::ByteBuffer* in,
                                                         grpc::ByteBuffer* out) {
  return Unary<v1::GetDomainRequest, v1::GetDomainResponse>(
      ctx, RpcMethod::kGetDomain, "GetDomain", in, out, [&](const auto& req, auto* resp) {
        return runtime_->GetDomain(req.device_id(), resp->mutable_domain());
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* PagePoolServiceImpl::DumpPageTable(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in) {
  auto slot = AdmitStream(ctx, "DumpPageTable");
  if (!slot.ok()) return new RefusedWriter(stats_, RpcMethod::kDumpPageTable, slot.status());
  v1::DumpPageTableRequest req;
  if (absl::Status p = ParseRequest("DumpPageTable", in, &req); !p.ok()) {
    return new RefusedWriter(stats_, RpcMethod::kDumpPageTable, p);
  }
  return new DumpReactor(runtime_, stats_, *std::move(slot), req, max_message_bytes_);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* PagePoolServiceImpl::WatchEvents(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in) {
  auto slot = AdmitStream(ctx, "WatchEvents");
  if (!slot.ok()) return new RefusedWriter(stats_, RpcMethod::kWatchEvents, slot.status());
  v1::WatchEventsRequest req;
  if (absl::Status p = ParseRequest("WatchEvents", in, &req); !p.ok()) {
    return new RefusedWriter(stats_, RpcMethod::kWatchEvents, p);
  }
  return new WatchReactor(runtime_, stats_, req, options_.max_watch_queue, *std::move(slot));
}

}  // namespace pagepool::server
