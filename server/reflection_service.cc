#include "server/reflection_service.h"

#include <algorithm>
#include <deque>
#include <unordered_set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "base/mutex.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "proto/descriptor_set.h"
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>

namespace pagepool::server {

namespace gpb = google::protobuf;

ReflectionIndex::ReflectionIndex()
    : generated_(*gpb::DescriptorPool::generated_pool()),
      merged_(&embedded_, &generated_),
      pool_(&merged_) {}

absl::StatusOr<std::unique_ptr<ReflectionIndex>> ReflectionIndex::Create(
    std::string_view descriptor_set) {
  gpb::FileDescriptorSet set;
  if (!set.ParseFromArray(descriptor_set.data(), static_cast<int>(descriptor_set.size()))) {
    return absl::InvalidArgumentError("the descriptor set does not parse as a FileDescriptorSet");
  }
  auto index = absl::WrapUnique(new ReflectionIndex());
  for (const gpb::FileDescriptorProto& file : set.file()) {
    if (!index->embedded_.Add(file)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file '", file.name(), "' is in the descriptor set twice, or redefines a symbol"));
    }
  }
  // Build every file now: a broken set fails here, not in the middle of a client's question.
  for (const gpb::FileDescriptorProto& file : set.file()) {
    if (index->pool_.FindFileByName(file.name()) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file '", file.name(), "' of the descriptor set does not build (see the log)"));
    }
  }
  return index;
}

absl::StatusOr<std::unique_ptr<ReflectionIndex>> ReflectionIndex::CreateEmbedded() {
  return Create(proto::DescriptorSetBytes());
}

std::vector<std::string> ReflectionIndex::WithDependencies(const gpb::FileDescriptor* file) const {
  std::vector<std::string> out;
  std::unordered_set<const gpb::FileDescriptor*> seen = {file};
  std::deque<const gpb::FileDescriptor*> todo = {file};
  while (!todo.empty()) {
    const gpb::FileDescriptor* f = todo.front();
    todo.pop_front();
    gpb::FileDescriptorProto proto;
    f->CopyTo(&proto);
    f->CopyJsonNameTo(&proto);
    f->CopySourceCodeInfoTo(&proto);
    out.push_back(proto.SerializeAsString());
    for (int i = 0; i < f->dependency_count(); ++i) {
      const gpb::FileDescriptor* dep = f->dependency(i);
      if (dep != nullptr && seen.insert(dep).second) todo.push_back(dep);
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReflectionIndex::FileByName(
    const std::string& name) const {
  const gpb::FileDescriptor* file = pool_.FindFileByName(name);
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("file '", name, "' not found"));
  return WithDependencies(file);
}

absl::StatusOr<std::vector<std::string>> ReflectionIndex::FileContainingSymbol(
    const std::string& symbol) const {
  const gpb::FileDescriptor* file = pool_.FindFileContainingSymbol(symbol);
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("symbol '", symbol, "' not found"));
  return WithDependencies(file);
}

absl::StatusOr<std::vector<std::string>> ReflectionIndex::FileContainingExtension(
    const std::string& containing_type, int number) const {
  const gpb::Descriptor* type = pool_.FindMessageTypeByName(containing_type);
  if (type == nullptr) {
    return absl::NotFoundError(absl::StrCat("message type '", containing_type, "' not found"));
  }
  const gpb::FieldDescriptor* extension = pool_.FindExtensionByNumber(type, number);
  if (extension == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("extension ", number, " of '", containing_type, "' not found"));
  }
  return WithDependencies(extension->file());
}

absl::StatusOr<std::vector<int>> ReflectionIndex::ExtensionNumbersOfType(
    const std::string& type) const {
  const gpb::Descriptor* desc = pool_.FindMessageTypeByName(type);
  if (desc == nullptr)
    return absl::NotFoundError(absl::StrCat("message type '", type, "' not found"));
  std::vector<const gpb::FieldDescriptor*> extensions;
  pool_.FindAllExtensions(desc, &extensions);
  std::vector<int> numbers;
  numbers.reserve(extensions.size());
  for (const gpb::FieldDescriptor* e : extensions) numbers.push_back(e->number());
  std::sort(numbers.begin(), numbers.end());
  numbers.erase(std::unique(numbers.begin(), numbers.end()), numbers.end());
  return numbers;
}

namespace {

// The names list_services answers: the server's services, known once BuildAndStart has registered
// them all (until then, an empty list).
// Thread safety: Set from the thread that builds the server, Get from handlers; takes mu_.
class ServiceNames final {
 public:
  void Set(std::vector<std::string> names) {
    base::MutexLock l(&mu_);
    names_ = std::move(names);
  }
  std::vector<std::string> Get() const {
    base::MutexLock l(&mu_);
    return names_;
  }

 private:
  mutable base::Mutex mu_;
  std::vector<std::string> names_ ABSL_GUARDED_BY(mu_);
};

// Answers one request into `resp`. Req/Resp are the messages of grpc.reflection.v1alpha or
// grpc.reflection.v1: same fields, different packages.
template <typename Req, typename Resp>
void Answer(const ReflectionIndex& index, const ServiceNames& names, const Req& req, Resp* resp) {
  resp->set_valid_host(req.host());
  *resp->mutable_original_request() = req;
  absl::Status status;
  auto add_files = [&](absl::StatusOr<std::vector<std::string>> files) {
    if (!files.ok()) {
      status = files.status();
      return;
    }
    auto* out = resp->mutable_file_descriptor_response();
    for (std::string& f : *files) out->add_file_descriptor_proto(std::move(f));
  };
  switch (req.message_request_case()) {
    case Req::kFileByFilename: add_files(index.FileByName(req.file_by_filename())); break;
    case Req::kFileContainingSymbol:
      add_files(index.FileContainingSymbol(req.file_containing_symbol()));
      break;
    case Req::kFileContainingExtension:
      add_files(index.FileContainingExtension(req.file_containing_extension().containing_type(),
                                              req.file_containing_extension().extension_number()));
      break;
    case Req::kAllExtensionNumbersOfType: {
      auto numbers = index.ExtensionNumbersOfType(req.all_extension_numbers_of_type());
      if (!numbers.ok()) {
        status = numbers.status();
        break;
      }
      auto* out = resp->mutable_all_extension_numbers_response();
      out->set_base_type_name(req.all_extension_numbers_of_type());
      for (int n : *numbers) out->add_extension_number(n);
      break;
    }
    case Req::kListServices: {
      auto* out = resp->mutable_list_services_response();
      for (std::string& name : names.Get()) out->add_service()->set_name(std::move(name));
      break;
    }
    case Req::MESSAGE_REQUEST_NOT_SET:
      status = absl::InvalidArgumentError(
          "the request asks nothing: set one of file_by_filename, file_containing_symbol, "
          "file_containing_extension, all_extension_numbers_of_type, list_services");
      break;
  }
  if (!status.ok()) {
    // Setting error_response clears whatever else the message_response oneof held.
    auto* err = resp->mutable_error_response();
    err->set_error_code(static_cast<int>(status.code()));
    err->set_error_message(std::string(status.message()));
  }
}

// One version of the ServerReflection service over the shared index and names. Each stream answers
// its requests in order until the client half-closes or goes away.
template <typename GeneratedService, typename Req, typename Resp>
class ServerReflectionImpl final : public GeneratedService {
 public:
  ServerReflectionImpl(std::shared_ptr<const ReflectionIndex> index,
                       std::shared_ptr<const ServiceNames> names)
      : index_(std::move(index)), names_(std::move(names)) {}

  // Context: a gRPC sync-server thread, one per open stream.
  grpc::Status ServerReflectionInfo(grpc::ServerContext* /*ctx*/,
                                    grpc::ServerReaderWriter<Resp, Req>* stream) override {
    Req req;
    while (stream->Read(&req)) {
      Resp resp;
      Answer(*index_, *names_, req, &resp);
      if (!stream->Write(resp)) break;  // The client went away; its status is moot.
    }
    return grpc::Status::OK;
  }

 private:
  const std::shared_ptr<const ReflectionIndex> index_;
  const std::shared_ptr<const ServiceNames> names_;
};

using ServerReflectionV1Alpha =
    ServerReflectionImpl<grpc::reflection::v1alpha::ServerReflection::Service,
                         grpc::reflection::v1alpha::ServerReflectionRequest,
                         grpc::reflection::v1alpha::ServerReflectionResponse>;
using ServerReflectionV1 = ServerReflectionImpl<grpc::reflection::v1::ServerReflection::Service,
                                                grpc::reflection::v1::ServerReflectionRequest,
                                                grpc::reflection::v1::ServerReflectionResponse>;

// Hands the services to the server (ServerInitializer keeps them alive as long as the server) and
// copies the server's service list once it is complete, as the stock plugin does.
class ReflectionPlugin final : public grpc::ServerBuilderPlugin {
 public:
  explicit ReflectionPlugin(std::shared_ptr<const ReflectionIndex> index)
      : names_(std::make_shared<ServiceNames>()),
        v1alpha_(std::make_shared<ServerReflectionV1Alpha>(index, names_)),
        v1_(std::make_shared<ServerReflectionV1>(index, names_)) {}

  std::string name() override { return "pagepool_server_reflection"; }
  void InitServer(grpc::ServerInitializer* si) override {
    si->RegisterService(v1alpha_);
    si->RegisterService(v1_);
  }
  void Finish(grpc::ServerInitializer* si) override { names_->Set(*si->GetServiceList()); }
  void ChangeArguments(const std::string& /*name*/, void* /*value*/) override {}
  // Makes the builder create the sync-server queues the services need.
  bool has_sync_methods() const override { return true; }

 private:
  const std::shared_ptr<ServiceNames> names_;
  const std::shared_ptr<grpc::Service> v1alpha_;
  const std::shared_ptr<grpc::Service> v1_;
};

// Adds the plugin to one builder (the stock plugin registers a process-wide factory instead).
class ReflectionOption final : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(std::unique_ptr<ReflectionPlugin> plugin)
      : plugin_(std::move(plugin)) {}

  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    if (plugin_ != nullptr) plugins->push_back(std::move(plugin_));
  }

 private:
  std::unique_ptr<ReflectionPlugin> plugin_;
};

}  // namespace

void EnableServerReflection(grpc::ServerBuilder* builder,
                            std::shared_ptr<const ReflectionIndex> index) {
  builder->SetOption(
      std::make_unique<ReflectionOption>(std::make_unique<ReflectionPlugin>(std::move(index))));
}

absl::Status EnableServerReflection(grpc::ServerBuilder* builder) {
  auto index = ReflectionIndex::CreateEmbedded();
  if (!index.ok()) return index.status();
  EnableServerReflection(builder, std::shared_ptr<const ReflectionIndex>(std::move(*index)));
  return absl::OkStatus();
}

}  // namespace pagepool::server
