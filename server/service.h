// File: server/service.h
//
// PagePoolServiceImpl: the gRPC callback-API service of pagepoold. Each call parses its request
// (INVALID_ARGUMENT naming the message type when it does not parse), hands it to the Runtime, which
// validates it and does the work, converts the absl::Status to a grpc::Status (a cast) and counts
// the call in RpcStats. What the service itself decides is what only the wire knows: an answer
// above the message limit (--max-message-bytes) gives its pages back and is refused with
// RESOURCE_EXHAUSTED, and stream messages are cut to fit the limit; and who may call: with a bearer
// token every call must carry it (UNAUTHENTICATED otherwise, server/call_guard.h), and streams
// open at once are limited in all and per client address (RESOURCE_EXHAUSTED naming the limit).
// Streams:
//   Traffic        a ServerBidiReactor that reads ahead while it writes answers, in order (a
//                  message that does not parse ends the stream with INVALID_ARGUMENT); pages are
//                  handled one by one (a bad page is refused in the answer, the others are done),
//                  unlike unary Recycle/Return, which are all-or-nothing. A stream may hold at most
//                  --max-held-per-stream pages (allocated and not yet given back through it): an
//                  allocation past that is refused in the answer with RESOURCE_EXHAUSTED. Pages a
//                  stream holds when its client goes away stay in flight, as the stack would hold
//                  them: they come back when someone returns their handles, or are unmapped when
//                  their pool is destroyed (DestroyPool, UnbindDevice, daemon shutdown);
//   ListInflight   a ServerWriteReactor that walks the index a chunk at a time (Runtime::
//                  ListInflight: 4096 records, one RCU read section each) from the request's
//                  start_index_id, reading the next chunk only once the previous one is written,
//                  so memory stays one chunk whatever the pool's size; 256 entries per message
//                  (fewer if --max-message-bytes is small);
//   DumpPageTable  a ServerWriteReactor that walks the page table one message at a time (a fresh
//                  lockless walk from a cursor for each message), so memory stays one message;
//   WatchEvents    server/watch_reactor.h: subscribed to the Runtime's event hub until the client
//                  cancels or the daemon shuts down (it then finishes with OK); a watcher more than
//                  --max-watch-queue events behind is ended with RESOURCE_EXHAUSTED saying how
//                  many events it lost.
//
// Thread safety: gRPC calls the methods from its callback threads concurrently; the class holds
// only pointers to thread-safe objects, which must outlive the grpc::Server.
#ifndef PAGEPOOL_SERVER_SERVICE_H_
#define PAGEPOOL_SERVER_SERVICE_H_

#include <string>

#include "pagepool/v1/pagepool.grpc.pb.h"
#include "server/call_guard.h"
#include "server/rpc_stats.h"
#include "server/runtime.h"
#include <grpcpp/grpcpp.h>

namespace pagepool::server {

// The generated service with every method raw (ByteBuffer in and out, parsed and serialized here),
// so that a request or a Traffic message that does not parse gets INVALID_ARGUMENT naming the
// message (the typed callback API answers UNIMPLEMENTED with no message, and reports a Traffic
// message that does not parse as a client half-close).
namespace internal {
using V1 = ::pagepool::v1::PagePoolService;
using PagePoolServiceBase = V1::WithRawCallbackMethod_CreateDevice<
    V1::WithRawCallbackMethod_GetDevice<V1::WithRawCallbackMethod_ListDevices<
        V1::WithRawCallbackMethod_UnbindDevice<V1::WithRawCallbackMethod_DeleteDevice<
            V1::WithRawCallbackMethod_CreatePool<V1::WithRawCallbackMethod_GetPool<
                V1::WithRawCallbackMethod_ListPools<V1::WithRawCallbackMethod_DestroyPool<
                    V1::WithRawCallbackMethod_Allocate<V1::WithRawCallbackMethod_Recycle<
                        V1::WithRawCallbackMethod_Return<V1::WithRawCallbackMethod_Traffic<
                            V1::WithRawCallbackMethod_ListInflight<
                                V1::WithRawCallbackMethod_GetDomain<
                                    V1::WithRawCallbackMethod_DumpPageTable<
                                        V1::WithRawCallbackMethod_WatchEvents<
                                            V1::WithRawCallbackMethod_RefFrag<
                                                V1::Service>>>>>>>>>>>>>>>>>>;
}  // namespace internal

// What the service enforces on its own (the daemon's flags of the same names).
struct ServiceOptions {
  // The server's send limit (0: none): an Allocate or Traffic answer that would exceed it gives its
  // pages back and is refused with RESOURCE_EXHAUSTED instead of being lost on the wire, and stream
  // messages are cut to fit it.
  uint32_t max_message_bytes = 0;
  uint32_t max_watch_queue = 65536;   // events queued per WatchEvents watcher (>= 1)
  uint32_t max_streams = 0;           // streams open at once, in all (0: no limit)
  uint32_t max_streams_per_peer = 0;  // streams open at once per client address (0: none)
  uint64_t max_held_per_stream = 0;   // pages one Traffic stream may hold (0: no limit)
  std::string auth_token;             // bearer token every call must carry ("" : none)
};

class PagePoolServiceImpl final : public internal::PagePoolServiceBase {
 public:
  // `runtime` and `stats` must outlive the service and the grpc::Server it is registered with.
  PagePoolServiceImpl(Runtime* runtime, RpcStats* stats, const ServiceOptions& options = {})
      : runtime_(runtime),
        stats_(stats),
        options_(options),
        max_message_bytes_(options.max_message_bytes),
        token_(options.auth_token),
        streams_(options.max_streams, options.max_streams_per_peer) {}

  // Streams open now (for tests and /metrics). Context: any thread.
  uint32_t open_streams() const { return streams_.open(); }

  grpc::ServerUnaryReactor* CreateDevice(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* req,
                                         grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* GetDevice(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                      grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* ctx,
                                        const grpc::ByteBuffer* req,
                                        grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* UnbindDevice(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* req,
                                         grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* DeleteDevice(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* req,
                                         grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* CreatePool(grpc::CallbackServerContext* ctx,
                                       const grpc::ByteBuffer* req,
                                       grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* GetPool(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                    grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* ListPools(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                      grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* DestroyPool(grpc::CallbackServerContext* ctx,
                                        const grpc::ByteBuffer* req,
                                        grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* Allocate(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                     grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* Recycle(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                    grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* Return(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                   grpc::ByteBuffer* resp) override;
  // Raw: reads TrafficRequest and writes TrafficResponse as ByteBuffers (see above).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Traffic(
      grpc::CallbackServerContext* ctx) override;
  // Server streams, raw too: they write ListInflightResponse, DumpPageTableResponse and Event.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ListInflight(grpc::CallbackServerContext* ctx,
                                                           const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                      grpc::ByteBuffer* resp) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* DumpPageTable(grpc::CallbackServerContext* ctx,
                                                            const grpc::ByteBuffer* req) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchEvents(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* RefFrag(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                    grpc::ByteBuffer* resp) override;

 private:
  // A raw unary call: checks the bearer token (UNAUTHENTICATED), parses the request
  // (INVALID_ARGUMENT naming the message type when it does not parse), runs fn(req, &resp),
  // serializes the answer and finishes, counting the call.
  template <typename Req, typename Resp, typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, RpcMethod method,
                                  const char* name, const grpc::ByteBuffer* in,
                                  grpc::ByteBuffer* out, Fn fn);
  // Finishes a unary call with `status`, counting it.
  grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, RpcMethod method,
                                        const absl::Status& status);

  // The token check and a stream slot for a new stream; on refusal the status to finish it with.
  absl::StatusOr<StreamLimiter::Slot> AdmitStream(grpc::CallbackServerContext* ctx,
                                                  const char* name);

  Runtime* const runtime_;
  RpcStats* const stats_;
  const ServiceOptions options_;
  const uint32_t max_message_bytes_;
  const BearerToken token_;
  StreamLimiter streams_;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_SERVICE_H_
