// File: server/service.h
//
// PagePoolServiceImpl: the gRPC callback-API service of pagepoold. Each call validates nothing
// itself and decides nothing: it hands the request to the Runtime, converts the absl::Status to a
// grpc::Status (a cast) and counts the call in RpcStats. Streams:
//   Traffic        a ServerBidiReactor that answers each batch before reading the next one (raw:
//                  a message that does not parse ends the stream with INVALID_ARGUMENT);
//   ListInflight   a ServerWriteReactor over a snapshot taken when the call starts (an RCU walk of
//                  the index), 256 entries per message (fewer if --max-message-bytes is small);
//   DumpPageTable  a ServerWriteReactor that walks the page table one message at a time (a fresh
//                  lockless walk from a cursor for each message), so memory stays one message;
//   WatchEvents    a ServerWriteReactor subscribed to the Runtime's event hub until the client
//                  cancels or the daemon shuts down (it then finishes with OK).
//
// Thread safety: gRPC calls the methods from its callback threads concurrently; the class holds only
// pointers to thread-safe objects, which must outlive the grpc::Server.
#ifndef PAGEPOOL_SERVER_SERVICE_H_
#define PAGEPOOL_SERVER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "pagepool/v1/pagepool.grpc.pb.h"
#include "server/rpc_stats.h"
#include "server/runtime.h"

namespace pagepool::server {

// The generated CallbackService, except that Traffic is raw (ByteBuffer in and out, parsed by the
// reactor): the typed callback API cannot tell a Traffic message that does not parse from a client
// half-close, and ended such a stream with OK.
namespace internal {
using V1 = ::pagepool::v1::PagePoolService;
using PagePoolServiceBase = V1::WithCallbackMethod_CreateDevice<V1::WithCallbackMethod_GetDevice<
    V1::WithCallbackMethod_ListDevices<V1::WithCallbackMethod_UnbindDevice<
        V1::WithCallbackMethod_CreatePool<V1::WithCallbackMethod_GetPool<
            V1::WithCallbackMethod_ListPools<V1::WithCallbackMethod_DestroyPool<
                V1::WithCallbackMethod_Allocate<V1::WithCallbackMethod_Recycle<
                    V1::WithCallbackMethod_Return<V1::WithRawCallbackMethod_Traffic<
                        V1::WithCallbackMethod_ListInflight<V1::WithCallbackMethod_GetDomain<
                            V1::WithCallbackMethod_DumpPageTable<
                                V1::WithCallbackMethod_WatchEvents<V1::Service>>>>>>>>>>>>>>>>;
}  // namespace internal

class PagePoolServiceImpl final : public internal::PagePoolServiceBase {
 public:
  // `runtime` and `stats` must outlive the service and the grpc::Server it is registered with.
  // `max_message_bytes` is the server's send limit (0: none): an Allocate or Traffic answer that
  // would exceed it gives its pages back and is refused with RESOURCE_EXHAUSTED instead of being
  // lost on the wire, and stream messages are cut to fit it.
  PagePoolServiceImpl(Runtime* runtime, RpcStats* stats, uint32_t max_message_bytes = 0)
      : runtime_(runtime), stats_(stats), max_message_bytes_(max_message_bytes) {}

  grpc::ServerUnaryReactor* CreateDevice(grpc::CallbackServerContext* ctx,
                                         const pagepool::v1::CreateDeviceRequest* req,
                                         pagepool::v1::CreateDeviceResponse* resp) override;
  grpc::ServerUnaryReactor* GetDevice(grpc::CallbackServerContext* ctx,
                                      const pagepool::v1::GetDeviceRequest* req,
                                      pagepool::v1::GetDeviceResponse* resp) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* ctx,
                                        const pagepool::v1::ListDevicesRequest* req,
                                        pagepool::v1::ListDevicesResponse* resp) override;
  grpc::ServerUnaryReactor* UnbindDevice(grpc::CallbackServerContext* ctx,
                                         const pagepool::v1::UnbindDeviceRequest* req,
                                         pagepool::v1::UnbindDeviceResponse* resp) override;
  grpc::ServerUnaryReactor* CreatePool(grpc::CallbackServerContext* ctx,
                                       const pagepool::v1::CreatePoolRequest* req,
                                       pagepool::v1::CreatePoolResponse* resp) override;
  grpc::ServerUnaryReactor* GetPool(grpc::CallbackServerContext* ctx,
                                    const pagepool::v1::GetPoolRequest* req,
                                    pagepool::v1::GetPoolResponse* resp) override;
  grpc::ServerUnaryReactor* ListPools(grpc::CallbackServerContext* ctx,
                                      const pagepool::v1::ListPoolsRequest* req,
                                      pagepool::v1::ListPoolsResponse* resp) override;
  grpc::ServerUnaryReactor* DestroyPool(grpc::CallbackServerContext* ctx,
                                        const pagepool::v1::DestroyPoolRequest* req,
                                        pagepool::v1::DestroyPoolResponse* resp) override;
  grpc::ServerUnaryReactor* Allocate(grpc::CallbackServerContext* ctx,
                                     const pagepool::v1::AllocateRequest* req,
                                     pagepool::v1::AllocateResponse* resp) override;
  grpc::ServerUnaryReactor* Recycle(grpc::CallbackServerContext* ctx,
                                    const pagepool::v1::RecycleRequest* req,
                                    pagepool::v1::RecycleResponse* resp) override;
  grpc::ServerUnaryReactor* Return(grpc::CallbackServerContext* ctx,
                                   const pagepool::v1::ReturnRequest* req,
                                   pagepool::v1::ReturnResponse* resp) override;
  // Raw: reads TrafficRequest and writes TrafficResponse as ByteBuffers (see above).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Traffic(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<pagepool::v1::ListInflightResponse>* ListInflight(
      grpc::CallbackServerContext* ctx, const pagepool::v1::ListInflightRequest* req) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* ctx,
                                      const pagepool::v1::GetDomainRequest* req,
                                      pagepool::v1::GetDomainResponse* resp) override;
  grpc::ServerWriteReactor<pagepool::v1::DumpPageTableResponse>* DumpPageTable(
      grpc::CallbackServerContext* ctx, const pagepool::v1::DumpPageTableRequest* req) override;
  grpc::ServerWriteReactor<pagepool::v1::Event>* WatchEvents(
      grpc::CallbackServerContext* ctx, const pagepool::v1::WatchEventsRequest* req) override;

 private:
  // Finishes a unary call with `status`, counting it.
  grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, RpcMethod method,
                                        const absl::Status& status);

  Runtime* const runtime_;
  RpcStats* const stats_;
  const uint32_t max_message_bytes_;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_SERVICE_H_
