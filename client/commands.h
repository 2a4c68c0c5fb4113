// File: client/commands.h
//
// The subcommands of ppctl, one function each, with the arguments each one takes. They know nothing
// of the command-line parser (client/command_line.h fills the argument structs and dispatches here)
// and print through a CommandContext, so a test can run them against an in-process daemon.
// Output is the text of client/format.h, or JSON with the .proto's field names when ctx.json.
//
// Every Run* returns ppctl's exit status (the kExit* values below). Arguments that CLI11 cannot
// check (enum names, page handles) are checked here: a bad one prints "ppctl: ..." and returns
// kExitUsage before any call.
//
// Thread safety: one thread runs one command; separate commands may run concurrently on one Client.
#ifndef PAGEPOOL_CLIENT_COMMANDS_H_
#define PAGEPOOL_CLIENT_COMMANDS_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "client/client.h"
#include "client/traffic.h"

namespace pagepool::client {

// ppctl's exit statuses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRefused = 1;     // the daemon refused the call, could not be reached,
                                           // (report) an input or output file failed, or
                                           // (health) is not SERVING
inline constexpr int kExitUsage = 2;       // bad command line
inline constexpr int kExitViolations = 3;  // traffic: the device saw DMA-API violations
inline constexpr int kExitErrors = 4;      // traffic: operations refused unexpectedly

// Where a command prints and whom it asks.
struct CommandContext {
  Client& client;
  bool json = false;  // print JSON instead of text
  std::ostream& out;
  std::ostream& err;
  // Appended to the message of a call that failed with UNAVAILABLE (what to check over TLS).
  std::string unavailable_hint = {};
};

struct CreateDeviceArgs {
  std::string name;                   // "": the daemon names it devN
  std::string iommu_mode = "strict";  // strict, lazy, passthrough
  bool no_free_empty_tables = false;
  uint32_t address_width = 48;
  uint32_t dma_mask_bits = 0;  // 0: the address width
  std::string dma_coherence;   // coherent, non-coherent, swiotlb; "": the daemon's default
  bool model_iotlb = false;
};

struct CreatePoolArgs {
  uint64_t device_id = 0;
  uint32_t order = 0;
  uint32_t pool_size = 0;
  std::string strategy = "xarray";  // xarray, scan, none
  uint32_t napi_id = 0;
  bool no_dma_map = false;
  bool dma_sync_dev = false;
  uint32_t max_len = 0;
  uint32_t offset = 0;
  bool xdp_rxq = false;           // register the queue's xdp_rxq on the pool
  uint64_t replaces_pool_id = 0;  // a queue restart of this pool's queue
  bool keep_old_xdp_rxq = false;  // with replaces_pool_id
};

struct DestroyPoolArgs {
  uint64_t pool_id = 0;
  bool xdp_rxq_unreg = false;  // xdp_rxq_info_unreg's page_pool_destroy, not the driver's
};

struct AllocateArgs {
  uint64_t pool_id = 0;
  uint32_t count = 1;
  uint32_t frag_size = 0;  // --frag-size: fragments of this many bytes (0: whole pages)
};

// recycle and return.
struct PagesArgs {
  uint64_t pool_id = 0;
  std::vector<std::string> handles;  // FRAME:GEN (a page) or FRAME:GEN@OFFSET/SIZE (a fragment)
  bool napi_local = false;           // recycle only
};

struct ListInflightArgs {
  uint64_t pool_id = 0;
  uint64_t limit = 0;
  uint32_t start_index_id = 0;  // 0: from the first page
};

struct DumpPageTableArgs {
  uint64_t device_id = 0;
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t limit = 0;
  bool walk_cache = false;
};

struct WatchEventsArgs {
  std::vector<std::string> types;  // device-add, pool-detach, ...
  bool include_existing = false;
  uint64_t count = 0;  // stop after this many events (0: never)
};

struct TrafficArgs {
  TrafficOptions options;  // pattern, sizes, hold times ...; the enums come from:
  std::string strategy = "xarray";
  std::string iommu_mode = "strict";
  bool no_napi_local = false;
  std::string out_path;   // --out: the result as JSON
  std::string html_path;  // --html: the report page of this one result
};

struct ReportArgs {
  std::vector<std::string> inputs;  // `ppctl traffic --out` result files
  std::string out_path;             // -o: the HTML page
  std::string title = "pagepoold load report";
};

struct HealthArgs {
  std::string service;  // "": the whole server
};

int RunCreateDevice(CommandContext& ctx, const CreateDeviceArgs& args);
int RunGetDevice(CommandContext& ctx, uint64_t device_id);
int RunListDevices(CommandContext& ctx);
int RunUnbindDevice(CommandContext& ctx, uint64_t device_id);
int RunDeleteDevice(CommandContext& ctx, uint64_t device_id);
int RunCreatePool(CommandContext& ctx, const CreatePoolArgs& args);
int RunGetPool(CommandContext& ctx, uint64_t pool_id);
int RunListPools(CommandContext& ctx, uint64_t device_id);
int RunDestroyPool(CommandContext& ctx, const DestroyPoolArgs& args);
int RunAllocate(CommandContext& ctx, const AllocateArgs& args);
int RunRecycle(CommandContext& ctx, const PagesArgs& args);
int RunReturn(CommandContext& ctx, const PagesArgs& args);
// RefFrag of the fragment handles in args.handles (page handles are refused before any call).
int RunRefFrag(CommandContext& ctx, const PagesArgs& args);
int RunListInflight(CommandContext& ctx, const ListInflightArgs& args);
int RunGetDomain(CommandContext& ctx, uint64_t device_id);
int RunDumpPageTable(CommandContext& ctx, const DumpPageTableArgs& args);
// Prints events as they come, until args.count events or the stream ends.
int RunWatchEvents(CommandContext& ctx, const WatchEventsArgs& args);
// Runs a pattern (client/traffic.h); a progress line on stderr once a second when it is a terminal.
// --out writes the JSON result, --html its report page (client/report_page.h).
// kExitViolations when the device saw violations, kExitErrors on unexpected refusals.
int RunTrafficCommand(CommandContext& ctx, const TrafficArgs& args);
// Prints the serving status (grpc.health.v1); kExitOk only when SERVING.
int RunHealth(CommandContext& ctx, const HealthArgs& args);
// Writes the report page (client/report_page.h) of args.inputs to args.out_path; needs no daemon.
// kExitRefused when an input cannot be read or is not a traffic result, or the page cannot be
// written (the message names the file); kExitUsage when no input or output is named.
int RunReport(std::ostream& out, std::ostream& err, const ReportArgs& args);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_COMMANDS_H_
