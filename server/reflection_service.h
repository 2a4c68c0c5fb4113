// File: server/reflection_service.h
//
// Server reflection of pagepoold, in place of gRPC's stock plugin (grpc++_reflection), so that
// `grpcurl describe` shows the comments of the .proto files.
//
// The stock plugin serves descriptors from protobuf's generated pool, and generated C++ code drops
// source_code_info: the comments never reach the client. Here the files are served from a
// DescriptorPool built over the descriptor set that protoc wrote at build time with source info
// (proto/descriptor_set.h: pagepool.proto, grpc.health.v1, grpc.reflection), falling back to the
// generated pool for every other file (well-known types, ...).
//
//   ReflectionIndex          answers the questions of the protocol (file by name, file containing a
//                            symbol or an extension, extension numbers of a type) from that pool.
//   EnableServerReflection   registers grpc.reflection.v1alpha.ServerReflection (what gRPC 1.51's
//                            clients and grpcurl ask) and grpc.reflection.v1.ServerReflection (same
//                            messages, newer package) on a ServerBuilder, and lists the services
//                            the built server really registered.
//
// Answers follow the stock implementation: a file comes with its transitive dependencies (each once
// per answer); a question that cannot be answered gets an error_response (NOT_FOUND naming the
// file, symbol or type), and the stream goes on. A request that asks nothing gets INVALID_ARGUMENT
// (the stock one says UNIMPLEMENTED).
#ifndef PAGEPOOL_SERVER_REFLECTION_SERVICE_H_
#define PAGEPOOL_SERVER_REFLECTION_SERVICE_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor_database.h>
#include <grpcpp/server_builder.h>

namespace pagepool::server {

// The descriptors reflection serves: the files of a serialized FileDescriptorSet (kept whole,
// source_code_info included), then protobuf's generated pool for any file or symbol the set does
// not hold. Each answer is a list of serialized FileDescriptorProtos: the file asked for first,
// then its transitive dependencies, each once.
//
// Thread safety: immutable after Create; every method may be called from any thread concurrently
// (DescriptorPool lookups lock the pool's own mutex when they load a file from the fallback).
class ReflectionIndex final {
 public:
  // Builds the index over `descriptor_set` (a serialized google.protobuf.FileDescriptorSet; the
  // bytes are copied). INVALID_ARGUMENT if it does not parse, names a file twice, or holds a file
  // that does not build (a missing dependency, a symbol defined twice).
  static absl::StatusOr<std::unique_ptr<ReflectionIndex>> Create(std::string_view descriptor_set);

  // The index over the embedded set of proto/descriptor_set.h.
  static absl::StatusOr<std::unique_ptr<ReflectionIndex>> CreateEmbedded();

  ReflectionIndex(const ReflectionIndex&) = delete;
  ReflectionIndex& operator=(const ReflectionIndex&) = delete;

  // The file named `name` ("pagepool/v1/pagepool.proto"). NOT_FOUND if no such file.
  absl::StatusOr<std::vector<std::string>> FileByName(const std::string& name) const;

  // The file that defines `symbol`, a fully-qualified name without a leading dot: a package
  // member (service, message, enum, enum value, extension) or a member of one (method, field,
  // oneof, nested type). NOT_FOUND naming the symbol if none does.
  absl::StatusOr<std::vector<std::string>> FileContainingSymbol(const std::string& symbol) const;

  // The file that defines extension `number` of message type `containing_type`. NOT_FOUND if
  // the type is unknown or has no such extension.
  absl::StatusOr<std::vector<std::string>> FileContainingExtension(
      const std::string& containing_type, int number) const;

  // The numbers of every known extension of message type `type`, ascending; empty for a type
  // nobody extends (every proto3 message). NOT_FOUND if the type is unknown.
  absl::StatusOr<std::vector<int>> ExtensionNumbersOfType(const std::string& type) const;

 private:
  ReflectionIndex();

  // `file` and its transitive dependencies, serialized with source info and json names.
  std::vector<std::string> WithDependencies(const google::protobuf::FileDescriptor* file) const;

  // Declaration order is construction order: pool_ looks files up in merged_, which reads the two
  // databases before it.
  google::protobuf::SimpleDescriptorDatabase embedded_;
  google::protobuf::DescriptorPoolDatabase generated_;
  google::protobuf::MergedDescriptorDatabase merged_;
  google::protobuf::DescriptorPool pool_;
};

// Registers grpc.reflection.v1alpha.ServerReflection and grpc.reflection.v1.ServerReflection,
// answering from `index`, on the server `builder` builds. The services are handed to that server
// (it owns them: nothing here needs to outlive it), and when BuildAndStart returns they list every
// service the server registered, theirs and the default health service included. They are sync-API
// services (reflection is a trickle of calls), like the stock plugin's; `builder` then also runs a
// small sync thread pool.
// REQUIRES: the stock plugin (grpc::reflection::InitProtoReflectionServerBuilderPlugin) is neither
// enabled nor linked: it would register the same service names and protobuf symbols.
// Context: before builder->BuildAndStart(); once per builder.
void EnableServerReflection(grpc::ServerBuilder* builder,
                            std::shared_ptr<const ReflectionIndex> index);

// The same over the embedded descriptor set (ReflectionIndex::CreateEmbedded); fails, leaving
// `builder` untouched, only if that set is broken (a build problem).
absl::Status EnableServerReflection(grpc::ServerBuilder* builder);

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_REFLECTION_SERVICE_H_
