#include "client/commands.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "client/format.h"
#include "client/health.h"
#include "client/report_page.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;

namespace {

// The daemon refused the call (or could not be reached).
int Fail(CommandContext& ctx, const absl::Status& s) {
  ctx.err << "ppctl: " << absl::StatusCodeToString(s.code()) << ": " << s.message();
  if (absl::IsUnavailable(s)) ctx.err << ctx.unavailable_hint;
  ctx.err << std::endl;
  return kExitRefused;
}

// A bad argument, found before any call.
int Usage(CommandContext& ctx, const std::string& msg) {
  ctx.err << "ppctl: " << msg << std::endl;
  return kExitUsage;
}

// Prints the answer of a call: JSON, or its text (FormatResponse); or fails with its status.
template <typename Response>
int Reply(CommandContext& ctx, const absl::StatusOr<Response>& r) {
  if (!r.ok()) return Fail(ctx, r.status());
  ctx.out << (ctx.json ? ToJson(*r) : FormatResponse(*r));
  return kExitOk;
}

// An enum option: "strict" with prefix "IOMMU_MODE_" -> IOMMU_MODE_STRICT ("destroy-under" style
// dashes become underscores). False when `parse` does not know the name.
template <typename E, typename ParseFn>
bool ParseEnumOption(const std::string& text, const std::string& prefix, ParseFn parse, E* out) {
  std::string name = text;
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::replace(name.begin(), name.end(), '-', '_');
  return parse(prefix + name, out);
}

bool ParseIommuMode(const std::string& text, v1::IommuMode* out) {
  return ParseEnumOption(text, "IOMMU_MODE_", v1::IommuMode_Parse, out);
}

bool ParseStrategy(const std::string& text, v1::Strategy* out) {
  return ParseEnumOption(text, "STRATEGY_", v1::Strategy_Parse, out);
}

bool ParseDmaCoherence(const std::string& text, v1::DmaCoherence* out) {
  return text != "unspecified" &&
         ParseEnumOption(text, "DMA_COHERENCE_", v1::DmaCoherence_Parse, out);
}

const char kBadIommuMode[] = "' is not strict, lazy or passthrough";
const char kBadStrategy[] = "' is not xarray, scan or none";
const char kBadDmaCoherence[] = "' is not coherent, non-coherent or swiotlb";

// Pages (FRAME:GEN) into `pages`, fragments (FRAME:GEN@OFFSET/SIZE) into `frags`.
bool ParseHandles(const std::vector<std::string>& handles,
                  google::protobuf::RepeatedPtrField<v1::PageHandle>* pages,
                  google::protobuf::RepeatedPtrField<v1::FragHandle>* frags) {
  for (const std::string& h : handles) {
    const bool ok = h.find('@') == std::string::npos ? ParseHandle(h, pages->Add())
                                                     : ParseFrag(h, frags->Add());
    if (!ok) return false;
  }
  return true;
}

const char kBadHandles[] = "handles are FRAME:GEN (a page) or FRAME:GEN@OFFSET/SIZE (a fragment)";

// Writes `content` to `path` (nothing when the path is empty); false when it cannot.
bool WriteFileIfAsked(const std::string& path, const std::string& content) {
  if (path.empty()) return true;
  std::ofstream out(path);
  out << content;
  return static_cast<bool>(out);
}

// The name a result goes by in a report: its file name without ".json".
std::string ResultName(const std::string& path) {
  std::filesystem::path p(path);
  return p.extension() == ".json" ? p.stem().string() : p.filename().string();
}

}  // namespace

int RunCreateDevice(CommandContext& ctx, const CreateDeviceArgs& args) {
  v1::CreateDeviceRequest req;
  req.set_name(args.name);
  v1::IommuMode mode;
  if (!ParseIommuMode(args.iommu_mode, &mode)) {
    return Usage(ctx, "--iommu-mode: '" + args.iommu_mode + kBadIommuMode);
  }
  req.set_iommu_mode(mode);
  if (args.no_free_empty_tables) req.set_free_empty_tables(false);
  req.set_address_width(args.address_width);
  req.set_dma_mask_bits(args.dma_mask_bits);
  if (!args.dma_coherence.empty()) {
    v1::DmaCoherence coherence;
    if (!ParseDmaCoherence(args.dma_coherence, &coherence)) {
      return Usage(ctx, "--dma-coherence: '" + args.dma_coherence + kBadDmaCoherence);
    }
    req.set_dma_coherence(coherence);
  }
  req.set_model_iotlb(args.model_iotlb);
  return Reply(ctx, ctx.client.CreateDevice(req));
}

int RunGetDevice(CommandContext& ctx, uint64_t device_id) {
  return Reply(ctx, ctx.client.GetDevice(device_id));
}

int RunListDevices(CommandContext& ctx) { return Reply(ctx, ctx.client.ListDevices()); }

int RunUnbindDevice(CommandContext& ctx, uint64_t device_id) {
  return Reply(ctx, ctx.client.UnbindDevice(device_id));
}

int RunDeleteDevice(CommandContext& ctx, uint64_t device_id) {
  return Reply(ctx, ctx.client.DeleteDevice(device_id));
}

int RunCreatePool(CommandContext& ctx, const CreatePoolArgs& args) {
  v1::CreatePoolRequest req;
  req.set_device_id(args.device_id);
  req.set_order(args.order);
  req.set_pool_size(args.pool_size);
  req.set_napi_id(args.napi_id);
  v1::Strategy strategy;
  if (!ParseStrategy(args.strategy, &strategy)) {
    return Usage(ctx, "--strategy: '" + args.strategy + kBadStrategy);
  }
  req.set_strategy(strategy);
  v1::PoolFlags* flags = req.mutable_flags();
  flags->set_dma_map(!args.no_dma_map);
  flags->set_dma_sync_dev(args.dma_sync_dev);
  flags->set_max_len(args.max_len);
  flags->set_offset(args.offset);
  req.set_xdp_rxq(args.xdp_rxq);
  req.set_replaces_pool_id(args.replaces_pool_id);
  req.set_keep_old_xdp_rxq(args.keep_old_xdp_rxq);
  return Reply(ctx, ctx.client.CreatePool(req));
}

int RunGetPool(CommandContext& ctx, uint64_t pool_id) {
  return Reply(ctx, ctx.client.GetPool(pool_id));
}

int RunListPools(CommandContext& ctx, uint64_t device_id) {
  return Reply(ctx, ctx.client.ListPools(device_id));
}

int RunDestroyPool(CommandContext& ctx, const DestroyPoolArgs& args) {
  v1::DestroyPoolRequest req;
  req.set_pool_id(args.pool_id);
  req.set_xdp_rxq_unreg(args.xdp_rxq_unreg);
  return Reply(ctx, ctx.client.DestroyPool(req));
}

int RunAllocate(CommandContext& ctx, const AllocateArgs& args) {
  return Reply(ctx, ctx.client.Allocate(args.pool_id, args.count, args.frag_size));
}

int RunRecycle(CommandContext& ctx, const PagesArgs& args) {
  v1::RecycleRequest req;
  req.set_pool_id(args.pool_id);
  req.set_napi_local(args.napi_local);
  if (!ParseHandles(args.handles, req.mutable_pages(), req.mutable_frags())) {
    return Usage(ctx, kBadHandles);
  }
  return Reply(ctx, ctx.client.Recycle(req));
}

int RunReturn(CommandContext& ctx, const PagesArgs& args) {
  v1::ReturnRequest req;
  req.set_pool_id(args.pool_id);
  if (!ParseHandles(args.handles, req.mutable_pages(), req.mutable_frags())) {
    return Usage(ctx, kBadHandles);
  }
  return Reply(ctx, ctx.client.Return(req));
}

int RunRefFrag(CommandContext& ctx, const PagesArgs& args) {
  v1::RefFragRequest req;
  req.set_pool_id(args.pool_id);
  google::protobuf::RepeatedPtrField<v1::PageHandle> pages;
  if (!ParseHandles(args.handles, &pages, req.mutable_frags()) || !pages.empty()) {
    return Usage(ctx, "ref-frag takes fragment handles FRAME:GEN@OFFSET/SIZE");
  }
  return Reply(ctx, ctx.client.RefFrag(req));
}

int RunListInflight(CommandContext& ctx, const ListInflightArgs& args) {
  return Reply(ctx, ctx.client.ListInflight(args.pool_id, args.limit, args.start_index_id));
}

int RunGetDomain(CommandContext& ctx, uint64_t device_id) {
  return Reply(ctx, ctx.client.GetDomain(device_id));
}

int RunDumpPageTable(CommandContext& ctx, const DumpPageTableArgs& args) {
  v1::DumpPageTableRequest req;
  req.set_device_id(args.device_id);
  req.set_start(args.start);
  req.set_end(args.end);
  req.set_limit(args.limit);
  req.set_walk_cache(args.walk_cache);
  return Reply(ctx, ctx.client.DumpPageTable(req));
}

int RunWatchEvents(CommandContext& ctx, const WatchEventsArgs& args) {
  v1::WatchEventsRequest req;
  req.set_include_existing(args.include_existing);
  for (const std::string& t : args.types) {
    v1::EventType type;
    if (!ParseEnumOption(t, "EVENT_TYPE_", v1::EventType_Parse, &type)) {
      return Usage(ctx, "--type: '" + t + "' is not an event type");
    }
    req.add_types(type);
  }
  grpc::ClientContext call;
  auto reader = ctx.client.stub()->WatchEvents(&call, req);
  v1::Event event;
  uint64_t n = 0;
  const auto enough = [&] { return args.count != 0 && n >= args.count; };
  while (reader->Read(&event)) {
    ctx.out << (ctx.json ? ToJson(event) : FormatEvent(event)) << std::flush;
    ++n;
    if (enough()) {
      call.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok() && !enough()) return Fail(ctx, FromGrpc(s));
  return kExitOk;
}

int RunTrafficCommand(CommandContext& ctx, const TrafficArgs& args) {
  TrafficOptions options = args.options;
  if (!ParseStrategy(args.strategy, &options.strategy)) {
    return Usage(ctx, "--strategy: '" + args.strategy + kBadStrategy);
  }
  if (!ParseIommuMode(args.iommu_mode, &options.iommu_mode)) {
    return Usage(ctx, "--iommu-mode: '" + args.iommu_mode + kBadIommuMode);
  }
  options.napi_local = !args.no_napi_local;
  if (isatty(STDERR_FILENO)) {
    options.progress = [&ctx](const std::string& line) {
      ctx.err << "\r" << line << "\033[K" << std::flush;
    };
  }
  auto r = RunTraffic(ctx.client, options);
  if (options.progress) ctx.err << "\n";
  if (!r.ok()) return Fail(ctx, r.status());
  if (!WriteFileIfAsked(args.out_path, r->ToJson())) {
    return Usage(ctx, "cannot write --out " + args.out_path);
  }
  if (!args.html_path.empty()) {
    const std::string name = args.out_path.empty() ? options.pattern : ResultName(args.out_path);
    auto page = RenderReportPage({{name, r->ToJson()}}, "ppctl traffic " + options.pattern);
    if (!page.ok()) return Fail(ctx, page.status());
    if (!WriteFileIfAsked(args.html_path, *page)) {
      return Usage(ctx, "cannot write --html " + args.html_path);
    }
  }
  ctx.out << (ctx.json ? r->ToJson() : r->Summary()) << std::flush;
  if (r->violations > 0) return kExitViolations;
  if (r->errors > 0) return kExitErrors;
  return kExitOk;
}

int RunHealth(CommandContext& ctx, const HealthArgs& args) {
  auto status = CheckHealth(ctx.client, args.service);
  if (!status.ok()) return Fail(ctx, status.status());
  const std::string_view name = ServingStatusName(*status);
  if (ctx.json) {
    ctx.out << "{\n  \"status\": \"" << name << "\"\n}\n";
  } else {
    ctx.out << name << "\n";
  }
  return *status == ServingStatus::kServing ? kExitOk : kExitRefused;
}

int RunReport(std::ostream& out, std::ostream& err, const ReportArgs& args) {
  if (args.inputs.empty() || args.out_path.empty()) {
    err << "ppctl: report: name RESULT.json files and -o REPORT.html" << std::endl;
    return kExitUsage;
  }
  std::vector<ReportInput> inputs;
  for (const std::string& path : args.inputs) {
    std::ifstream in(path);
    std::stringstream text;
    if (in.is_open()) text << in.rdbuf();
    if (!in.is_open() || in.bad()) {
      err << "ppctl: report: cannot read " << path << std::endl;
      return kExitRefused;
    }
    inputs.push_back({ResultName(path), text.str(), path});
  }
  auto page = RenderReportPage(inputs, args.title);
  if (!page.ok()) {
    err << "ppctl: report: " << page.status().message() << std::endl;
    return kExitRefused;
  }
  if (!WriteFileIfAsked(args.out_path, *page)) {
    err << "ppctl: report: cannot write " << args.out_path << std::endl;
    return kExitRefused;
  }
  out << "report: " << inputs.size() << (inputs.size() == 1 ? " result" : " results") << " -> "
      << args.out_path << std::endl;
  return kExitOk;
}

}  // namespace pagepool::client
