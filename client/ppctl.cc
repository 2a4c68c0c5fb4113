// File: client/ppctl.cc
//
// ppctl: the command-line client of pagepoold. One subcommand per PagePoolService call (kebab-case:
// create-device, get-pool, ...), plus `traffic PATTERN`. Output is human-readable by default, JSON
// with the .proto's field names with --json. Exit codes: 0 success; 1 the daemon refused the call
// (or could not be reached: the gRPC status is printed); 2 bad command line; for traffic, 3 when the
// device saw violations and 4 when operations were refused unexpectedly.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/format.h"
#include "client/traffic.h"

namespace v1 = ::pagepool::v1;
using pagepool::client::Client;

namespace {

struct Globals {
  std::string target = "127.0.0.1:50051";
  bool json = false;
  int timeout_ms = 10000;
  std::string tls_ca;
};

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// Enum option parsing: "strict" -> IOMMU_MODE_STRICT. False when unknown.
template <typename E, typename ParseFn>
bool ParseEnum(const std::string& text, const std::string& prefix, ParseFn parse, E* out) {
  return parse(prefix + Upper(text), out);
}

std::string Lower(std::string s, const std::string& prefix) {
  if (s.rfind(prefix, 0) == 0) s = s.substr(prefix.size());
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

int Fail(const absl::Status& s) {
  std::cerr << "ppctl: " << absl::StatusCodeToString(s.code()) << ": " << s.message() << std::endl;
  return 1;
}

// For uint64_t options: CLI11 turns "-1" into 18446744073709551615 and a value above the range
// into the largest one without a word; refuse both (CLI11's own conversion then reads the value).
const CLI::Validator kUint64(
    [](std::string& text) -> std::string {
      errno = 0;
      char* end = nullptr;
      const char* begin = text.c_str();
      while (std::isspace(static_cast<unsigned char>(*begin))) ++begin;
      (void)std::strtoull(begin, &end, 0);
      if (*begin == '-' || *begin == '\0' || *end != '\0' || errno == ERANGE) {
        return "'" + text + "' is not a number in 0.." + std::to_string(UINT64_MAX);
      }
      return std::string();
    },
    "UINT64");

int Usage(const std::string& msg) {
  std::cerr << "ppctl: " << msg << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ppctl: command-line client of pagepoold (pagepool.v1.PagePoolService)"};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--target", g.target, "daemon address host:port")
      ->envname("PPCTL_TARGET")->capture_default_str();
  app.add_flag("--json", g.json, "print JSON (field names as in the .proto)");
  app.add_option("--timeout-ms", g.timeout_ms, "deadline of each unary call")->capture_default_str();
  app.add_option("--tls-ca", g.tls_ca, "PEM CA file: connect with TLS");

  // Arguments of every subcommand, filled by CLI11.
  uint64_t id = 0;
  std::string name, iommu_mode = "strict", strategy = "xarray";
  bool no_free_empty = false;
  uint32_t address_width = 48, order = 0, pool_size = 0, napi_id = 0, max_len = 0, offset = 0;
  bool no_dma_map = false, dma_sync_dev = false, napi_local = false, include_existing = false;
  uint32_t count = 1;
  uint64_t limit = 0, start = 0, end = 0, device_filter = 0, max_events = 0;
  std::vector<std::string> handles, types;

  auto* create_device = app.add_subcommand("create-device", "CreateDevice: a simulated NIC");
  create_device->add_option("--name", name, "device name (default devN)");
  create_device->add_option("--iommu-mode", iommu_mode, "strict, lazy or passthrough")
      ->capture_default_str();
  create_device->add_flag("--no-free-empty-tables", no_free_empty,
                          "keep page tables emptied by unmaps");
  create_device->add_option("--address-width", address_width, "39, 48 or 57")
      ->capture_default_str();
  auto* get_device = app.add_subcommand("get-device", "GetDevice");
  get_device->add_option("device_id", id)->required()->check(kUint64);
  auto* list_devices = app.add_subcommand("list-devices", "ListDevices");
  auto* unbind_device = app.add_subcommand("unbind-device", "UnbindDevice: destroy pools, unbind");
  unbind_device->add_option("device_id", id)->required()->check(kUint64);
  auto* create_pool = app.add_subcommand("create-pool", "CreatePool on a device");
  create_pool->add_option("device_id", id)->required()->check(kUint64);
  create_pool->add_option("--order", order, "page order 0..10")->capture_default_str();
  create_pool->add_option("--pool-size", pool_size, "ptr_ring size (0: 1024)");
  create_pool->add_option("--strategy", strategy, "xarray, scan or none")->capture_default_str();
  create_pool->add_option("--napi-id", napi_id, "NAPI instance id");
  create_pool->add_flag("--no-dma-map", no_dma_map, "do not DMA-map pages (no PP_FLAG_DMA_MAP)");
  create_pool->add_flag("--dma-sync-dev", dma_sync_dev, "PP_FLAG_DMA_SYNC_DEV");
  create_pool->add_option("--max-len", max_len, "bytes synced for the device");
  create_pool->add_option("--offset", offset, "offset of the device's writes");
  auto* get_pool = app.add_subcommand("get-pool", "GetPool");
  get_pool->add_option("pool_id", id)->required()->check(kUint64);
  auto* list_pools = app.add_subcommand("list-pools", "ListPools");
  list_pools->add_option("--device", device_filter, "only pools of this device")->check(kUint64);
  auto* destroy_pool = app.add_subcommand("destroy-pool", "DestroyPool with in-flight unmap");
  destroy_pool->add_option("pool_id", id)->required()->check(kUint64);
  auto* allocate = app.add_subcommand("allocate", "Allocate pages (prints FRAME:GEN handles)");
  allocate->add_option("pool_id", id)->required()->check(kUint64);
  allocate->add_option("--count", count, "pages")->capture_default_str();
  auto* recycle = app.add_subcommand("recycle", "Recycle pages FRAME:GEN ...");
  recycle->add_option("pool_id", id)->required()->check(kUint64);
  recycle->add_option("handles", handles, "FRAME:GEN handles")->required();
  recycle->add_flag("--napi-local", napi_local, "recycle directly (NAPI context)");
  auto* ret = app.add_subcommand("return", "Return pages FRAME:GEN ... to the page allocator");
  ret->add_option("pool_id", id)->required()->check(kUint64);
  ret->add_option("handles", handles, "FRAME:GEN handles")->required();
  auto* list_inflight = app.add_subcommand("list-inflight", "ListInflight: a pool's tracked pages");
  list_inflight->add_option("pool_id", id)->required()->check(kUint64);
  list_inflight->add_option("--limit", limit, "at most this many (0: all)")->check(kUint64);
  auto* get_domain = app.add_subcommand("get-domain", "GetDomain: page tables and violations");
  get_domain->add_option("device_id", id)->required()->check(kUint64);
  auto* dump = app.add_subcommand("dump-page-table", "DumpPageTable: present leaves");
  dump->add_option("device_id", id)->required()->check(kUint64);
  dump->add_option("--start", start, "first IOVA")->check(kUint64);
  dump->add_option("--end", end, "end IOVA (0: end of space)")->check(kUint64);
  dump->add_option("--limit", limit, "at most this many entries (0: all)")->check(kUint64);
  auto* watch = app.add_subcommand("watch-events", "WatchEvents until interrupted");
  watch->add_option("--type", types, "device-add, device-change, pool-add, pool-change, "
                                     "pool-detach, pool-delete (repeatable)");
  watch->add_flag("--include-existing", include_existing, "start with existing devices/pools");
  watch->add_option("--count", max_events, "stop after this many events (0: never)")->check(kUint64);

  pagepool::client::TrafficOptions topt;
  std::string out_path, tstrategy = "xarray", tmode = "strict";
  bool no_napi_local = false;
  auto* traffic = app.add_subcommand("traffic", "drive a traffic pattern over the Traffic stream");
  traffic->add_option("pattern", topt.pattern,
                      "steady, burst, hold, leak, destroy-under-traffic (or unary)")
      ->required();
  traffic->add_option("--duration", topt.duration_s, "seconds")->capture_default_str();
  traffic->add_option("--streams", topt.streams, "concurrent Traffic streams")
      ->capture_default_str();
  traffic->add_option("--batch", topt.batch, "pages per batch")->capture_default_str();
  traffic->add_option("--pool-id", topt.pool_id, "use this pool (default: create device + pool)")->check(kUint64);
  traffic->add_option("--strategy", tstrategy, "strategy of the pool created: xarray, scan, none")
      ->capture_default_str();
  traffic->add_option("--iommu-mode", tmode, "mode of the device created")->capture_default_str();
  traffic->add_option("--order", topt.order, "page order of the pool created");
  traffic->add_option("--hold", topt.hold_s, "hold: seconds each page is kept")
      ->capture_default_str();
  traffic->add_option("--max-held", topt.max_held, "hold, leak: pages held per stream at most")
      ->capture_default_str();
  traffic->add_option("--hold-batches", topt.hold_batches,
                      "destroy-under-traffic: batches held per stream")
      ->capture_default_str();
  traffic->add_flag("--unbind", topt.unbind,
                    "destroy-under-traffic: unbind the device instead of destroying the pool");
  traffic->add_flag("--keep", topt.keep, "keep the pool the run created");
  traffic->add_flag("--no-napi-local", no_napi_local, "recycle into the ptr_ring, not the cache");
  traffic->add_option("--out", out_path, "write the result as JSON to this file");
  std::string html_path;
  traffic->add_option("--html", html_path, "write an HTML report with charts to this file");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; any other bad command line exits 2 as documented (CLI11's own
    // codes, 104-120, are not ppctl's).
    return app.exit(e) == 0 ? 0 : 2;
  }
  // Debian's abseil is built with Mutex deadlock detection on; gRPC's mutexes are absl's.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  pagepool::client::ClientOptions copt;
  copt.timeout = std::chrono::milliseconds(g.timeout_ms);
  copt.tls_ca = g.tls_ca;
  auto connected = Client::Connect(g.target, copt);
  if (!connected.ok()) return Usage(std::string(connected.status().message()));
  Client& c = **connected;

  // Prints a response: JSON, or the human text `text`.
  auto print = [&](const google::protobuf::Message& m, const std::string& text) {
    std::cout << (g.json ? pagepool::client::ToJson(m) : text);
    return 0;
  };
  auto parse_handles = [&](google::protobuf::RepeatedPtrField<v1::PageHandle>* out) {
    for (const std::string& h : handles) {
      if (!pagepool::client::ParseHandle(h, out->Add())) return false;
    }
    return true;
  };

  if (*create_device) {
    v1::CreateDeviceRequest req;
    req.set_name(name);
    v1::IommuMode mode;
    if (!ParseEnum(iommu_mode, "IOMMU_MODE_", v1::IommuMode_Parse, &mode)) {
      return Usage("--iommu-mode: '" + iommu_mode + "' is not strict, lazy or passthrough");
    }
    req.set_iommu_mode(mode);
    if (no_free_empty) req.set_free_empty_tables(false);
    req.set_address_width(address_width);
    auto r = c.CreateDevice(req);
    if (!r.ok()) return Fail(r.status());
    return print(*r, pagepool::client::FormatDevice(r->device()));
  }
  if (*get_device) {
    auto r = c.GetDevice(id);
    if (!r.ok()) return Fail(r.status());
    return print(*r, pagepool::client::FormatDevice(r->device()) +
                         pagepool::client::FormatDomain(r->device().domain()));
  }
  if (*list_devices) {
    auto r = c.ListDevices();
    if (!r.ok()) return Fail(r.status());
    std::string text;
    for (const auto& d : r->devices()) text += pagepool::client::FormatDevice(d);
    if (text.empty()) text = "no devices\n";
    return print(*r, text);
  }
  if (*unbind_device) {
    auto r = c.UnbindDevice(id);
    if (!r.ok()) return Fail(r.status());
    return print(*r, "unbound: " + std::to_string(r->pools_destroyed()) + " pools destroyed, " +
                         std::to_string(r->inflight_at_destroy()) + " pages in flight, " +
                         std::to_string(r->pages_unmapped()) + " unmapped\n" +
                         pagepool::client::FormatDevice(r->device()));
  }
  if (*create_pool) {
    v1::CreatePoolRequest req;
    req.set_device_id(id);
    req.set_order(order);
    req.set_pool_size(pool_size);
    req.set_napi_id(napi_id);
    v1::Strategy st;
    if (!ParseEnum(strategy, "STRATEGY_", v1::Strategy_Parse, &st)) {
      return Usage("--strategy: '" + strategy + "' is not xarray, scan or none");
    }
    req.set_strategy(st);
    req.mutable_flags()->set_dma_map(!no_dma_map);
    req.mutable_flags()->set_dma_sync_dev(dma_sync_dev);
    req.mutable_flags()->set_max_len(max_len);
    req.mutable_flags()->set_offset(offset);
    auto r = c.CreatePool(req);
    if (!r.ok()) return Fail(r.status());
    return print(*r, pagepool::client::FormatPool(r->pool()));
  }
  if (*get_pool) {
    auto r = c.GetPool(id);
    if (!r.ok()) return Fail(r.status());
    return print(*r, pagepool::client::FormatPool(r->pool()));
  }
  if (*list_pools) {
    auto r = c.ListPools(device_filter);
    if (!r.ok()) return Fail(r.status());
    std::string text;
    for (const auto& p : r->pools()) text += pagepool::client::FormatPool(p);
    if (text.empty()) text = "no pools\n";
    return print(*r, text);
  }
  if (*destroy_pool) {
    auto r = c.DestroyPool(id);
    if (!r.ok()) return Fail(r.status());
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "pool %llu destroyed (%s): %llu pages in flight, %llu unmapped, %.3f ms\n",
                  (unsigned long long)r->pool_id(),
                  Lower(v1::Strategy_Name(r->strategy()), "STRATEGY_").c_str(),
                  (unsigned long long)r->inflight_at_destroy(),
                  (unsigned long long)r->pages_unmapped(), r->duration_ns() / 1e6);
    return print(*r, buf);
  }
  if (*allocate) {
    auto r = c.Allocate(id, count);
    if (!r.ok()) return Fail(r.status());
    std::string text;
    for (const auto& p : r->pages()) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " dma_addr 0x%llx\n", (unsigned long long)p.dma_addr());
      text += pagepool::client::FormatHandle(p.handle()) + buf;
    }
    return print(*r, text);
  }
  if (*recycle) {
    v1::RecycleRequest req;
    req.set_pool_id(id);
    req.set_napi_local(napi_local);
    if (!parse_handles(req.mutable_pages())) return Usage("handles are FRAME:GEN");
    auto r = c.Recycle(req);
    if (!r.ok()) return Fail(r.status());
    return print(*r, "recycled: " + std::to_string(r->cached()) + " cached, " +
                         std::to_string(r->ring()) + " ring, " + std::to_string(r->released()) +
                         " released\n");
  }
  if (*ret) {
    v1::ReturnRequest req;
    req.set_pool_id(id);
    if (!parse_handles(req.mutable_pages())) return Usage("handles are FRAME:GEN");
    auto r = c.Return(req);
    if (!r.ok()) return Fail(r.status());
    return print(*r, "returned: " + std::to_string(r->returned()) + " pages, " +
                         std::to_string(r->unmapped()) + " unmapped by this call\n");
  }
  if (*list_inflight) {
    auto r = c.ListInflight(id, limit);
    if (!r.ok()) return Fail(r.status());
    std::string text;
    for (const auto& p : r->pages()) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " dma_addr 0x%llx\n", (unsigned long long)p.dma_addr());
      text += "id " + std::to_string(p.index_id()) + " " +
              pagepool::client::FormatHandle(p.handle()) + buf;
    }
    text += std::to_string(r->pages_size()) + " pages tracked\n";
    return print(*r, text);
  }
  if (*get_domain) {
    auto r = c.GetDomain(id);
    if (!r.ok()) return Fail(r.status());
    return print(*r, pagepool::client::FormatDomain(r->domain()));
  }
  if (*dump) {
    v1::DumpPageTableRequest req;
    req.set_device_id(id);
    req.set_start(start);
    req.set_end(end);
    req.set_limit(limit);
    auto r = c.DumpPageTable(req);
    if (!r.ok()) return Fail(r.status());
    std::string text;
    for (const auto& e : r->entries()) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "iova 0x%012llx -> phys 0x%012llx size %llu prot %u%s%s\n",
                    (unsigned long long)e.iova(), (unsigned long long)e.phys(),
                    (unsigned long long)e.size(), e.prot(), e.dirty() ? " dirty" : "",
                    e.accessed() ? " accessed" : "");
      text += buf;
    }
    text += std::to_string(r->entries_size()) + " entries\n";
    return print(*r, text);
  }
  if (*watch) {
    v1::WatchEventsRequest req;
    req.set_include_existing(include_existing);
    for (const std::string& t : types) {
      v1::EventType et;
      if (!ParseEnum(t, "EVENT_TYPE_", v1::EventType_Parse, &et)) {
        return Usage("--type: '" + t + "' is not an event type");
      }
      req.add_types(et);
    }
    grpc::ClientContext ctx;
    auto reader = c.stub()->WatchEvents(&ctx, req);
    v1::Event ev;
    uint64_t n = 0;
    while (reader->Read(&ev)) {
      std::cout << (g.json ? pagepool::client::ToJson(ev) : pagepool::client::FormatEvent(ev))
                << std::flush;
      if (max_events != 0 && ++n >= max_events) {
        ctx.TryCancel();
        break;
      }
    }
    grpc::Status s = reader->Finish();
    if (!s.ok() && !(max_events != 0 && n >= max_events)) {
      return Fail(pagepool::client::FromGrpc(s));
    }
    return 0;
  }
  if (*traffic) {
    if (!ParseEnum(tstrategy, "STRATEGY_", v1::Strategy_Parse, &topt.strategy)) {
      return Usage("--strategy: '" + tstrategy + "' is not xarray, scan or none");
    }
    if (!ParseEnum(tmode, "IOMMU_MODE_", v1::IommuMode_Parse, &topt.iommu_mode)) {
      return Usage("--iommu-mode: '" + tmode + "' is not strict, lazy or passthrough");
    }
    topt.napi_local = !no_napi_local;
    if (isatty(STDERR_FILENO)) {
      topt.progress = [](const std::string& line) {
        std::fprintf(stderr, "\r%s\033[K", line.c_str());
        std::fflush(stderr);
      };
    }
    auto r = pagepool::client::RunTraffic(c, topt);
    if (topt.progress) std::fprintf(stderr, "\n");
    if (!r.ok()) return Fail(r.status());
    if (!out_path.empty()) {
      std::ofstream out(out_path);
      out << r->ToJson();
      if (!out) return Usage("cannot write --out " + out_path);
    }
    if (!html_path.empty()) {
      std::ofstream out(html_path);
      out << r->ToHtml();
      if (!out) return Usage("cannot write --html " + html_path);
    }
    std::cout << (g.json ? r->ToJson() : r->Summary()) << std::flush;
    if (r->violations > 0) return 3;
    if (r->errors > 0) return 4;
    return 0;
  }
  return Usage("no subcommand");
}
