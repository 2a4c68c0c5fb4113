#include "client/command_line.h"

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>

#include <CLI/CLI.hpp>

namespace pagepool::client {
namespace {

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

constexpr char kGlobalsFooter[] =
    "Global options (--target, --json, --timeout-ms, --tls-ca, --tls-cert, --tls-key, "
    "--auth-token-file: see ppctl --help) are accepted here too.";

void AddGlobalOptions(CLI::App* app, GlobalOptions* g) {
  app->add_option("--target", g->target, "daemon address host:port")
      ->envname("PPCTL_TARGET")
      ->capture_default_str();
  app->add_flag("--json", g->json, "print JSON (field names as in the .proto)");
  app->add_option("--timeout-ms", g->timeout_ms, "deadline of each unary call")
      ->capture_default_str();
  app->add_option("--tls-ca", g->tls_ca, "PEM CA file: connect with TLS");
  app->add_option("--tls-cert", g->tls_cert,
                  "PEM client certificate for mutual TLS (with --tls-key; implies TLS)");
  app->add_option("--tls-key", g->tls_key, "PEM private key of --tls-cert");
  app->add_option("--auth-token-file", g->auth_token_file,
                  "file holding the daemon's bearer token, sent with every call as "
                  "'authorization: Bearer <token>'");
}

// A required uint64 positional: a device or pool id.
void AddId(CLI::App* cmd, const char* name, uint64_t* id) {
  cmd->add_option(name, *id)->required()->check(kUint64);
}

// The subcommands' own options, bound to their fields of CommandArgs.
void AddNoOptions(CLI::App*, CommandArgs*) {}
void AddDeviceId(CLI::App* cmd, CommandArgs* a) { AddId(cmd, "device_id", &a->id); }
void AddPoolId(CLI::App* cmd, CommandArgs* a) { AddId(cmd, "pool_id", &a->id); }

void AddCreateDeviceOptions(CLI::App* cmd, CommandArgs* args) {
  CreateDeviceArgs& a = args->create_device;
  cmd->add_option("--name", a.name, "device name (default devN)");
  cmd->add_option("--iommu-mode", a.iommu_mode, "strict, lazy or passthrough")
      ->capture_default_str();
  cmd->add_flag("--no-free-empty-tables", a.no_free_empty_tables,
                "keep page tables emptied by unmaps");
  cmd->add_option("--address-width", a.address_width, "39, 48 or 57")->capture_default_str();
  cmd->add_option("--dma-mask-bits", a.dma_mask_bits,
                  "DMA mask: IOVAs stay below 2^bits (13 .. address width; 0: the width)")
      ->capture_default_str();
  cmd->add_option("--dma-coherence", a.dma_coherence,
                  "coherent (dma_dev_need_sync() false: no DMA syncs), non-coherent (default) or "
                  "swiotlb");
  cmd->add_flag("--model-iotlb", a.model_iotlb,
                "model the device's IOTLB and walk caches (GetDomain's walk-cache figures)");
}

void AddCreatePoolOptions(CLI::App* cmd, CommandArgs* args) {
  CreatePoolArgs& a = args->create_pool;
  AddId(cmd, "device_id", &a.device_id);
  cmd->add_option("--order", a.order, "page order 0..10")->capture_default_str();
  cmd->add_option("--pool-size", a.pool_size, "ptr_ring size (0: 1024)");
  cmd->add_option("--strategy", a.strategy, "xarray, scan or none")->capture_default_str();
  cmd->add_option("--napi-id", a.napi_id, "NAPI instance id");
  cmd->add_flag("--no-dma-map", a.no_dma_map, "do not DMA-map pages (no PP_FLAG_DMA_MAP)");
  cmd->add_flag("--dma-sync-dev", a.dma_sync_dev, "PP_FLAG_DMA_SYNC_DEV");
  cmd->add_option("--max-len", a.max_len, "bytes synced for the device");
  cmd->add_option("--offset", a.offset, "offset of the device's writes");
  cmd->add_flag("--xdp-rxq", a.xdp_rxq,
                "the queue registers its xdp_rxq on the pool (one more user of the pool)");
  cmd->add_option("--replaces", a.replaces_pool_id,
                  "restart the queue of this pool (ring resize): new pool first, then the old "
                  "queue stops and its pool's users are dropped")
      ->check(kUint64);
  cmd->add_flag("--keep-old-xdp-rxq", a.keep_old_xdp_rxq,
                "with --replaces: leave the old queue's xdp_rxq registered (the old pool stays "
                "until destroy-pool --xdp-rxq-unreg)");
}

void AddDestroyPoolOptions(CLI::App* cmd, CommandArgs* args) {
  AddId(cmd, "pool_id", &args->destroy_pool.pool_id);
  cmd->add_flag("--xdp-rxq-unreg", args->destroy_pool.xdp_rxq_unreg,
                "xdp_rxq_info_unreg: drop an xdp_rxq's user instead of the driver's");
}

void AddListPoolsOptions(CLI::App* cmd, CommandArgs* a) {
  cmd->add_option("--device", a->list_pools_device, "only pools of this device")->check(kUint64);
}

void AddAllocateOptions(CLI::App* cmd, CommandArgs* a) {
  AddId(cmd, "pool_id", &a->allocate.pool_id);
  cmd->add_option("--count", a->allocate.count, "pages (fragments, with --frag-size)")
      ->capture_default_str();
  cmd->add_option("--frag-size", a->allocate.frag_size,
                  "allocate fragments of this many bytes (page_pool_alloc_frag; rounded up to 64, "
                  "at most the pool's page size); 0: whole pages")
      ->capture_default_str();
}

void AddReturnOptions(CLI::App* cmd, CommandArgs* a) {
  AddId(cmd, "pool_id", &a->pages.pool_id);
  cmd->add_option("handles", a->pages.handles,
                  "FRAME:GEN page handles, FRAME:GEN@OFFSET/SIZE fragment handles")
      ->required();
}

void AddRecycleOptions(CLI::App* cmd, CommandArgs* a) {
  AddReturnOptions(cmd, a);
  cmd->add_flag("--napi-local", a->pages.napi_local, "recycle directly (NAPI context)");
}

void AddListInflightOptions(CLI::App* cmd, CommandArgs* a) {
  AddId(cmd, "pool_id", &a->list_inflight.pool_id);
  cmd->add_option("--limit", a->list_inflight.limit, "at most this many (0: all)")->check(kUint64);
  cmd->add_option("--start-index-id", a->list_inflight.start_index_id,
                  "only pages with index id >= this (resumes a broken listing)");
}

void AddDumpPageTableOptions(CLI::App* cmd, CommandArgs* args) {
  DumpPageTableArgs& a = args->dump_page_table;
  AddId(cmd, "device_id", &a.device_id);
  cmd->add_option("--start", a.start, "first IOVA")->check(kUint64);
  cmd->add_option("--end", a.end, "end IOVA (0: end of space)")->check(kUint64);
  cmd->add_option("--limit", a.limit, "at most this many entries (0: all)")->check(kUint64);
  cmd->add_flag("--walk-cache", a.walk_cache, "also show the device's walk-cache entries");
}

void AddWatchEventsOptions(CLI::App* cmd, CommandArgs* args) {
  WatchEventsArgs& a = args->watch_events;
  cmd->add_option("--type", a.types,
                  "device-add, device-change, pool-add, pool-change, pool-detach, pool-delete "
                  "(repeatable)");
  cmd->add_flag("--include-existing", a.include_existing, "start with existing devices/pools");
  cmd->add_option("--count", a.count, "stop after this many events (0: never)")->check(kUint64);
}

constexpr char kTrafficFooter[] =
    "Patterns:\n"
    "  steady     allocate a batch, recycle the pages of the last answer\n"
    "  burst      8 batches out, then all back\n"
    "  hold       pages kept --hold seconds, then returned\n"
    "  leak       pages never given back (--max-held per stream)\n"
    "  destroy-under-traffic\n"
    "             runs the whole --duration. At half time the pool is destroyed (or the device\n"
    "             unbound, --unbind) while --hold-batches batches per stream are held; the\n"
    "             streams return what they hold to the destroyed pool (refusals there are\n"
    "             expected), then steady traffic goes on to a fresh pool on the same device\n"
    "             (after --unbind: a fresh device) until the end. The destroy is an event on\n"
    "             the timeline; the violations are those of the original device plus the fresh\n"
    "             one; the run destroys the fresh pool at the end.\n"
    "  unary      Allocate then Return as unary calls, for comparison\n"
    "--window N keeps N batches in flight per stream (1..256; unary ignores it). The timeline is\n"
    "sampled every 100 ms for the first 60 s, then every second.";

void AddTrafficOptions(CLI::App* cmd, CommandArgs* args) {
  TrafficArgs& a = args->traffic;
  TrafficOptions& o = a.options;
  cmd->footer(std::string(kTrafficFooter) + "\n\n" + kGlobalsFooter);
  cmd->add_option("pattern", o.pattern,
                  "steady, burst, hold, leak, destroy-under-traffic (or unary)")
      ->required();
  cmd->add_option("--duration", o.duration_s, "seconds")->capture_default_str();
  cmd->add_option("--streams", o.streams, "concurrent Traffic streams")->capture_default_str();
  cmd->add_option("--batch", o.batch, "pages per batch (fragments, with --frag-size)")
      ->capture_default_str();
  cmd->add_option("--frag-size", o.frag_size,
                  "fragment mode: batches allocate fragments of this many bytes and give them "
                  "back (page_pool_alloc_frag; unary: Allocate with frag_size); 0: whole pages")
      ->capture_default_str();
  cmd->add_option("--window", o.window, "batches in flight per stream (1..256)")
      ->check(CLI::Range(1u, kMaxTrafficWindow))
      ->capture_default_str();
  cmd->add_option("--pool-id", o.pool_id, "use this pool (default: create device + pool)")
      ->check(kUint64);
  cmd->add_option("--strategy", a.strategy, "strategy of the pool created: xarray, scan, none")
      ->capture_default_str();
  cmd->add_option("--iommu-mode", a.iommu_mode, "mode of the device created")
      ->capture_default_str();
  cmd->add_option("--order", o.order, "page order of the pool created");
  cmd->add_option("--hold", o.hold_s, "hold: seconds each page is kept")->capture_default_str();
  cmd->add_option("--max-held", o.max_held, "hold, leak: pages held per stream at most")
      ->capture_default_str();
  cmd->add_option("--hold-batches", o.hold_batches,
                  "destroy-under-traffic: batches held per stream")
      ->capture_default_str();
  cmd->add_flag("--unbind", o.unbind,
                "destroy-under-traffic: unbind the device instead of destroying the pool");
  cmd->add_flag("--keep", o.keep, "keep the pool the run created");
  cmd->add_flag("--no-napi-local", a.no_napi_local, "recycle into the ptr_ring, not the cache");
  cmd->add_option("--out", a.out_path, "write the result as JSON to this file");
  cmd->add_option("--html", a.html_path,
                  "write this result's report page to this file (as ppctl report does)");
}

void AddReportOptions(CLI::App* cmd, CommandArgs* args) {
  ReportArgs& a = args->report;
  cmd->add_option("results", a.inputs, "ppctl traffic --out result files")->required();
  cmd->add_option("-o,--out", a.out_path, "the HTML page to write")->required();
  cmd->add_option("--title", a.title, "the page's title")->capture_default_str();
}

void AddHealthOptions(CLI::App* cmd, CommandArgs* a) {
  cmd->add_option("--service", a->health.service,
                  "service name (default: the whole server), e.g. pagepool.v1.PagePoolService");
}

constexpr char kCompareFooter[] =
    "Each strategy (xarray, scan, none) gets a fresh device of the same settings and a fresh\n"
    "pool; the same traffic (one Traffic stream, window 1) is replayed on it, leaving --inflight\n"
    "pages held; then DestroyPool, UnbindDevice, and the held pages are returned late (after the\n"
    "unbind). --repeat rounds, strategies in rotated order, after --warmup replays; times are the\n"
    "best of the rounds (--json: best and median, and every round). Index bytes are read from\n"
    "pagepoold's /metrics (--metrics; default: the --target host, port 9464). Exit 3 when xarray\n"
    "or scan saw violations.";

void AddCompareOptions(CLI::App* cmd, CommandArgs* args) {
  CompareArgs& a = args->compare;
  cmd->footer(std::string(kCompareFooter) + "\n\n" + kGlobalsFooter);
  CLI::Option* seed = cmd->add_option("--seed", a.trace.seed, "seed of the generated traffic")
                          ->check(kUint64)
                          ->capture_default_str();
  CLI::Option* inflight =
      cmd->add_option("--inflight", a.trace.inflight, "pages left in flight at the destroy")
          ->capture_default_str();
  CLI::Option* batch =
      cmd->add_option("--batch", a.trace.batch, "pages allocated per batch")->capture_default_str();
  CLI::Option* batches =
      cmd->add_option("--batches", a.trace.batches, "churn batches before the fill")
          ->capture_default_str();
  CLI::Option* working_set =
      cmd->add_option("--working-set", a.trace.working_set, "pages held during the churn")
          ->capture_default_str();
  CLI::Option* return_pct =
      cmd->add_option("--return-pct", a.trace.return_pct,
                      "percent of the churn's give-backs returned (the rest recycled)")
          ->check(CLI::Range(0u, 100u))
          ->capture_default_str();
  cmd->add_option("--record", a.record_path, "write the traffic (a trace file) here");
  cmd->add_option("--replay", a.replay_path, "replay this trace file instead of generating")
      ->excludes(seed)
      ->excludes(inflight)
      ->excludes(batch)
      ->excludes(batches)
      ->excludes(working_set)
      ->excludes(return_pct);
  cmd->add_option("--repeat", a.options.repeat, "measured rounds")->capture_default_str();
  cmd->add_option("--warmup", a.options.warmup, "unmeasured replays first")->capture_default_str();
  cmd->add_option("--iommu-mode", a.options.iommu_mode,
                  "strict, lazy or passthrough (default: the daemon's)");
  cmd->add_flag("--no-free-empty-tables", a.options.no_free_empty_tables,
                "keep page tables emptied by unmaps");
  cmd->add_option("--metrics", a.metrics, "pagepoold's /metrics HOST:PORT, or off");
}

// One row of the table: a subcommand's name, help line, options, and run: `run` with a client of
// the daemon, or `run_offline` for a subcommand that needs none.
struct Subcommand {
  const char* name;
  const char* help;
  void (*add_options)(CLI::App* cmd, CommandArgs* args);
  int (*run)(CommandContext& ctx, const CommandArgs& args);
  int (*run_offline)(std::ostream& out, std::ostream& err, const CommandArgs& args) = nullptr;
};

using Args = const CommandArgs&;
const Subcommand kSubcommands[] = {
    {"create-device", "CreateDevice: a simulated NIC", AddCreateDeviceOptions,
     [](CommandContext& c, Args a) { return RunCreateDevice(c, a.create_device); }},
    {"get-device", "GetDevice", AddDeviceId,
     [](CommandContext& c, Args a) { return RunGetDevice(c, a.id); }},
    {"list-devices", "ListDevices", AddNoOptions,
     [](CommandContext& c, Args) { return RunListDevices(c); }},
    {"unbind-device", "UnbindDevice: destroy pools, unbind", AddDeviceId,
     [](CommandContext& c, Args a) { return RunUnbindDevice(c, a.id); }},
    {"delete-device", "DeleteDevice: free an unbound device whose pools are gone", AddDeviceId,
     [](CommandContext& c, Args a) { return RunDeleteDevice(c, a.id); }},
    {"create-pool", "CreatePool on a device", AddCreatePoolOptions,
     [](CommandContext& c, Args a) { return RunCreatePool(c, a.create_pool); }},
    {"get-pool", "GetPool", AddPoolId,
     [](CommandContext& c, Args a) { return RunGetPool(c, a.id); }},
    {"list-pools", "ListPools", AddListPoolsOptions,
     [](CommandContext& c, Args a) { return RunListPools(c, a.list_pools_device); }},
    {"destroy-pool", "DestroyPool: drop a user; the last one destroys (in-flight unmap)",
     AddDestroyPoolOptions,
     [](CommandContext& c, Args a) { return RunDestroyPool(c, a.destroy_pool); }},
    {"allocate", "Allocate pages or fragments (prints FRAME:GEN or FRAME:GEN@OFFSET/SIZE handles)",
     AddAllocateOptions, [](CommandContext& c, Args a) { return RunAllocate(c, a.allocate); }},
    {"recycle", "Recycle pages FRAME:GEN and fragments FRAME:GEN@OFFSET/SIZE ...",
     AddRecycleOptions, [](CommandContext& c, Args a) { return RunRecycle(c, a.pages); }},
    {"return", "Return pages and fragments ... to the page allocator", AddReturnOptions,
     [](CommandContext& c, Args a) { return RunReturn(c, a.pages); }},
    {"ref-frag", "RefFrag: one more reference on fragments FRAME:GEN@OFFSET/SIZE ...",
     AddReturnOptions, [](CommandContext& c, Args a) { return RunRefFrag(c, a.pages); }},
    {"list-inflight", "ListInflight: a pool's tracked pages", AddListInflightOptions,
     [](CommandContext& c, Args a) { return RunListInflight(c, a.list_inflight); }},
    {"get-domain", "GetDomain: page tables and violations", AddDeviceId,
     [](CommandContext& c, Args a) { return RunGetDomain(c, a.id); }},
    {"dump-page-table", "DumpPageTable: present leaves", AddDumpPageTableOptions,
     [](CommandContext& c, Args a) { return RunDumpPageTable(c, a.dump_page_table); }},
    {"watch-events", "WatchEvents until interrupted", AddWatchEventsOptions,
     [](CommandContext& c, Args a) { return RunWatchEvents(c, a.watch_events); }},
    {"traffic", "drive a traffic pattern over the Traffic stream", AddTrafficOptions,
     [](CommandContext& c, Args a) { return RunTrafficCommand(c, a.traffic); }},
    {"health", "grpc.health.v1 Check: prints the serving status; exit 0 only when SERVING",
     AddHealthOptions, [](CommandContext& c, Args a) { return RunHealth(c, a.health); }},
    {"compare", "the seed-002 table: the same traffic against xarray, scan and none",
     AddCompareOptions, [](CommandContext& c, Args a) { return RunCompareCommand(c, a.compare); }},
    {"report", "render traffic results (--out JSON) as one HTML page with charts; no daemon",
     AddReportOptions, nullptr,
     [](std::ostream& out, std::ostream& err, Args a) { return RunReport(out, err, a.report); }},
};

// A TLS handshake the daemon refuses shows only as UNAVAILABLE ("Socket closed"): say what to
// check.
std::string UnavailableHint(const GlobalOptions& g) {
  if (g.tls_ca.empty() && g.tls_cert.empty()) return "";
  if (g.tls_cert.empty()) {
    return " (over TLS: is the daemon's certificate signed by the --tls-ca CA? A daemon with "
           "--tls-client-ca also needs a client certificate: --tls-cert and --tls-key)";
  }
  return " (over mutual TLS: is the daemon's certificate signed by the --tls-ca CA, and --tls-cert "
         "by the CA of the daemon's --tls-client-ca?)";
}

}  // namespace

CommandLine ParseCommandLine(int argc, const char* const* argv, std::ostream& out,
                             std::ostream& err) {
  CommandLine cl;
  CLI::App app{"ppctl: command-line client of pagepoold (pagepool.v1.PagePoolService)"};
  app.require_subcommand(1);
  // Options a subcommand does not know fall through to ppctl's own: the global options work after
  // the subcommand too. Set before add_subcommand, which copies it into each subcommand.
  app.fallthrough();
  AddGlobalOptions(&app, &cl.globals);
  for (const Subcommand& s : kSubcommands) {
    CLI::App* cmd = app.add_subcommand(s.name, s.help);
    cmd->footer(kGlobalsFooter);
    s.add_options(cmd, &cl.args);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; any other bad command line exits 2 as documented (CLI11's own
    // codes, 104-120, are not ppctl's).
    cl.exit_status = app.exit(e, out, err) == 0 ? kExitOk : kExitUsage;
    return cl;
  }
  cl.subcommand = app.get_subcommands().front()->get_name();
  cl.args.compare.target = cl.globals.target;
  return cl;
}

int RunCommand(const CommandLine& command_line, std::ostream& out, std::ostream& err) {
  for (const Subcommand& s : kSubcommands) {
    if (command_line.subcommand == s.name && s.run_offline != nullptr) {
      return s.run_offline(out, err, command_line.args);
    }
  }
  const GlobalOptions& g = command_line.globals;
  ClientOptions options;
  options.timeout = std::chrono::milliseconds(g.timeout_ms);
  options.tls_ca = g.tls_ca;
  options.tls_cert = g.tls_cert;
  options.tls_key = g.tls_key;
  options.auth_token_file = g.auth_token_file;
  auto client = Client::Connect(g.target, options);
  if (!client.ok()) {
    err << "ppctl: " << client.status().message() << std::endl;
    return kExitUsage;
  }
  CommandContext ctx{**client, g.json, out, err, UnavailableHint(g)};
  for (const Subcommand& s : kSubcommands) {
    if (command_line.subcommand == s.name && s.run != nullptr) {
      return s.run(ctx, command_line.args);
    }
  }
  err << "ppctl: no subcommand" << std::endl;
  return kExitUsage;
}

std::vector<std::string> SubcommandNames() {
  std::vector<std::string> names;
  for (const Subcommand& s : kSubcommands) names.emplace_back(s.name);
  return names;
}

}  // namespace pagepool::client
