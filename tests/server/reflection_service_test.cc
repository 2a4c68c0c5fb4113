// Reflection service tests: server/reflection_service against an in-process server on 127.0.0.1:0
// (an unimplemented PagePoolService, the default health service and our reflection), asked through
// the generated grpc.reflection v1alpha and v1 stubs; and ReflectionIndex over hand-made descriptor
// sets (dependencies, broken sets).
#include "server/reflection_service.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "pagepool/v1/pagepool.grpc.pb.h"
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

namespace pagepool {
namespace {

namespace gpb = ::google::protobuf;
namespace refl = ::grpc::reflection::v1alpha;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;

constexpr char kPagepoolProto[] = "pagepool/v1/pagepool.proto";

class ReflectionServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    ASSERT_TRUE(server::EnableServerReflection(&builder).ok());
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&pagepool_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_),
                                   grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  // Sends `requests` on one v1alpha stream and returns the answers.
  std::vector<refl::ServerReflectionResponse> Ask(
      const std::vector<refl::ServerReflectionRequest>& requests) {
    auto stub = refl::ServerReflection::NewStub(channel_);
    grpc::ClientContext ctx;
    auto stream = stub->ServerReflectionInfo(&ctx);
    std::vector<refl::ServerReflectionResponse> out;
    for (const auto& req : requests) {
      EXPECT_TRUE(stream->Write(req));
      refl::ServerReflectionResponse resp;
      if (!stream->Read(&resp)) break;
      out.push_back(resp);
    }
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
    return out;
  }
  refl::ServerReflectionResponse AskOne(const refl::ServerReflectionRequest& req) {
    auto out = Ask({req});
    return out.empty() ? refl::ServerReflectionResponse() : out[0];
  }
  static refl::ServerReflectionRequest Symbol(const std::string& symbol) {
    refl::ServerReflectionRequest req;
    req.set_file_containing_symbol(symbol);
    return req;
  }
  static std::vector<gpb::FileDescriptorProto> Files(const refl::ServerReflectionResponse& resp) {
    std::vector<gpb::FileDescriptorProto> files;
    for (const std::string& raw : resp.file_descriptor_response().file_descriptor_proto()) {
      files.emplace_back();
      EXPECT_TRUE(files.back().ParseFromString(raw));
    }
    return files;
  }

  pagepool::v1::PagePoolService::CallbackService pagepool_;  // Every call UNIMPLEMENTED.
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Leading comments by source_code_info path.
std::map<std::vector<int>, std::string> Comments(const gpb::FileDescriptorProto& file) {
  std::map<std::vector<int>, std::string> out;
  for (const auto& loc : file.source_code_info().location()) {
    out[std::vector<int>(loc.path().begin(), loc.path().end())] = loc.leading_comments();
  }
  return out;
}

TEST_F(ReflectionServiceTest, ListsEveryRegisteredService) {
  refl::ServerReflectionRequest req;
  req.set_list_services("");
  auto resp = AskOne(req);
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  EXPECT_THAT(names, IsSupersetOf({"pagepool.v1.PagePoolService", "grpc.health.v1.Health",
                                   "grpc.reflection.v1alpha.ServerReflection",
                                   "grpc.reflection.v1.ServerReflection"}));
}

TEST_F(ReflectionServiceTest, ServesTheProtoCommentsOfEveryMethodFieldAndEnumValue) {
  auto files = Files(AskOne(Symbol("pagepool.v1.PagePoolService")));
  ASSERT_FALSE(files.empty());
  const gpb::FileDescriptorProto& fd = files[0];
  EXPECT_EQ(fd.name(), kPagepoolProto);
  auto all = Comments(fd);
  auto comment = [&all](const std::vector<int>& path) { return all[path]; };
  ASSERT_EQ(fd.service_size(), 1);
  ASSERT_GT(fd.service(0).method_size(), 0);
  for (int m = 0; m < fd.service(0).method_size(); ++m) {
    EXPECT_NE(comment({6, 0, 2, m}), "") << fd.service(0).method(m).name();
  }
  for (int i = 0; i < fd.message_type_size(); ++i) {
    for (int f = 0; f < fd.message_type(i).field_size(); ++f) {
      EXPECT_NE(comment({4, i, 2, f}), "")
          << fd.message_type(i).name() << "." << fd.message_type(i).field(f).name();
    }
  }
  for (int i = 0; i < fd.enum_type_size(); ++i) {
    for (int v = 0; v < fd.enum_type(i).value_size(); ++v) {
      EXPECT_NE(comment({5, i, 2, v}), "") << fd.enum_type(i).value(v).name();
    }
  }
  EXPECT_THAT(comment({6, 0, 2, 0}), HasSubstr("simulated NIC"));  // CreateDevice
}

TEST_F(ReflectionServiceTest, ResolvesMembersToTheirFile) {
  for (const char* symbol :
       {"pagepool.v1.PagePoolService.CreateDevice", "pagepool.v1.Pool", "pagepool.v1.Pool.inflight",
        "pagepool.v1.IommuMode", "pagepool.v1.IOMMU_MODE_LAZY"}) {
    auto files = Files(AskOne(Symbol(symbol)));
    ASSERT_FALSE(files.empty()) << symbol;
    EXPECT_EQ(files[0].name(), kPagepoolProto) << symbol;
  }
  auto health = Files(AskOne(Symbol("grpc.health.v1.Health")));
  ASSERT_FALSE(health.empty());
  EXPECT_EQ(health[0].name(), "grpc/health/v1/health.proto");
  EXPECT_GT(health[0].source_code_info().location_size(), 0);
}

TEST_F(ReflectionServiceTest, FallsBackToTheGeneratedPool) {
  refl::ServerReflectionRequest req;
  req.set_file_by_filename("google/protobuf/descriptor.proto");
  auto files = Files(AskOne(req));
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].name(), "google/protobuf/descriptor.proto");
  // Extensions of a message nobody extends: an empty list, not an error.
  req.set_all_extension_numbers_of_type("google.protobuf.FileOptions");
  auto resp = AskOne(req);
  EXPECT_TRUE(resp.has_all_extension_numbers_response()) << resp.DebugString();
  EXPECT_EQ(resp.all_extension_numbers_response().base_type_name(), "google.protobuf.FileOptions");
}

TEST_F(ReflectionServiceTest, UnanswerableQuestionsGetAnErrorResponseAndTheStreamGoesOn) {
  std::vector<refl::ServerReflectionRequest> reqs(6);
  reqs[0].set_file_containing_symbol("pagepool.v1.NoSuchThing");
  reqs[1].set_file_by_filename("no/such.proto");
  reqs[2].mutable_file_containing_extension()->set_containing_type("pagepool.v1.Pool");
  reqs[2].mutable_file_containing_extension()->set_extension_number(1000);
  reqs[3].set_all_extension_numbers_of_type("pagepool.v1.NoSuchType");
  // reqs[4] asks nothing.
  reqs[5].set_file_containing_symbol("pagepool.v1.Pool");
  auto answers = Ask(reqs);
  ASSERT_EQ(answers.size(), reqs.size());
  const char* named[] = {"pagepool.v1.NoSuchThing", "no/such.proto", "pagepool.v1.Pool",
                         "pagepool.v1.NoSuchType"};
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(answers[i].has_error_response()) << i;
    EXPECT_EQ(answers[i].error_response().error_code(), grpc::StatusCode::NOT_FOUND) << i;
    EXPECT_THAT(answers[i].error_response().error_message(), HasSubstr(named[i]));
    EXPECT_EQ(answers[i].original_request().DebugString(), reqs[i].DebugString());
  }
  ASSERT_TRUE(answers[4].has_error_response());
  EXPECT_EQ(answers[4].error_response().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(answers[5].has_file_descriptor_response());
}

TEST_F(ReflectionServiceTest, V1AnswersLikeV1Alpha) {
  auto stub = grpc::reflection::v1::ServerReflection::NewStub(channel_);
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);
  grpc::reflection::v1::ServerReflectionRequest req;
  req.set_file_containing_symbol("pagepool.v1.PagePoolService.Traffic");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_GT(resp.file_descriptor_response().file_descriptor_proto_size(), 0);
  gpb::FileDescriptorProto fd;
  ASSERT_TRUE(fd.ParseFromString(resp.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(fd.name(), kPagepoolProto);
  EXPECT_GT(fd.source_code_info().location_size(), 0);
}

// --- ReflectionIndex over hand-made sets ---------------------------------------------------------

gpb::FileDescriptorProto File(const std::string& name, const std::string& message,
                              std::vector<std::string> deps = {}) {
  gpb::FileDescriptorProto f;
  f.set_name(name);
  f.set_package("t");
  f.set_syntax("proto3");
  for (auto& d : deps) f.add_dependency(d);
  f.add_message_type()->set_name(message);
  return f;
}

std::string Set(std::vector<gpb::FileDescriptorProto> files) {
  gpb::FileDescriptorSet set;
  for (auto& f : files) *set.add_file() = f;
  return set.SerializeAsString();
}

std::vector<std::string> Names(const std::vector<std::string>& raw) {
  std::vector<std::string> names;
  for (const auto& r : raw) {
    gpb::FileDescriptorProto f;
    EXPECT_TRUE(f.ParseFromString(r));
    names.push_back(f.name());
  }
  return names;
}

TEST(ReflectionIndexTest, AnswersAFileThenItsTransitiveDependenciesOnce) {
  auto index = server::ReflectionIndex::Create(
      Set({File("t/c.proto", "C"), File("t/b.proto", "B", {"t/c.proto"}),
           File("t/a.proto", "A", {"t/b.proto", "t/c.proto"})}));
  ASSERT_TRUE(index.ok()) << index.status();
  auto files = (*index)->FileContainingSymbol("t.A");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(Names(*files), (std::vector<std::string>{"t/a.proto", "t/b.proto", "t/c.proto"}));
  auto c = (*index)->FileByName("t/c.proto");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(Names(*c), std::vector<std::string>{"t/c.proto"});
  EXPECT_EQ((*index)->FileContainingSymbol("t.D").status().code(), absl::StatusCode::kNotFound);
}

TEST(ReflectionIndexTest, RefusesABrokenSet) {
  EXPECT_EQ(server::ReflectionIndex::Create("\xff\xff not a set").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto missing_dep = server::ReflectionIndex::Create(Set({File("t/a.proto", "A", {"t/x.proto"})}));
  EXPECT_EQ(missing_dep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing_dep.status().message(), HasSubstr("t/a.proto"));
  auto twice =
      server::ReflectionIndex::Create(Set({File("t/a.proto", "A"), File("t/b.proto", "A")}));
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReflectionIndexTest, TheEmbeddedSetBuilds) {
  auto index = server::ReflectionIndex::CreateEmbedded();
  ASSERT_TRUE(index.ok()) << index.status();
  for (const char* symbol :
       {"pagepool.v1.PagePoolService", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}) {
    EXPECT_TRUE((*index)->FileContainingSymbol(symbol).ok()) << symbol;
  }
}

}  // namespace
}  // namespace pagepool
