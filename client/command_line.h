// File: client/command_line.h
//
// The command line of ppctl: ParseCommandLine reads it without touching the network (the global
// options, which subcommand, its arguments); RunCommand connects to the daemon and runs that
// subcommand (client/commands.h; `report` needs no daemon). ppctl's main is these two calls.
//
// The subcommands come from one table (command_line.cc): name, help, options, and the Run* function
// of client/commands.h. The global options --target (env PPCTL_TARGET), --json, --timeout-ms,
// --tls-ca, --tls-cert, --tls-key and --auth-token-file are accepted before or after the subcommand
// ("ppctl traffic steady --target H:P").
//
// Thread safety: no shared state; each call stands alone.
#ifndef PAGEPOOL_CLIENT_COMMAND_LINE_H_
#define PAGEPOOL_CLIENT_COMMAND_LINE_H_

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "client/commands.h"
#include "client/compare.h"

namespace pagepool::client {

struct GlobalOptions {
  std::string target = "127.0.0.1:50051";
  bool json = false;
  int timeout_ms = 10000;       // deadline of each unary call
  std::string tls_ca;           // PEM CA file; empty: plaintext
  std::string tls_cert;         // PEM client certificate for mutual TLS (with tls_key)
  std::string tls_key;          // its PEM private key
  std::string auth_token_file;  // bearer token sent with every call
};

// The arguments of every subcommand; only the chosen one's are filled.
struct CommandArgs {
  uint64_t id = 0;  // the one id of get-device, unbind-device, get-pool, destroy-pool, get-domain
  CreateDeviceArgs create_device;
  CreatePoolArgs create_pool;
  DestroyPoolArgs destroy_pool;
  uint64_t list_pools_device = 0;  // list-pools --device
  AllocateArgs allocate;
  PagesArgs pages;  // recycle, return
  ListInflightArgs list_inflight;
  DumpPageTableArgs dump_page_table;
  WatchEventsArgs watch_events;
  TrafficArgs traffic;
  HealthArgs health;
  ReportArgs report;
  CompareArgs compare;
};

struct CommandLine {
  // Set when parsing ends the run: 0 after --help, kExitUsage for a bad command line (the parser's
  // message was printed). Unset: RunCommand runs `subcommand`.
  std::optional<int> exit_status;
  std::string subcommand;  // "get-device", "traffic", ...
  GlobalOptions globals;
  CommandArgs args;
};

// Parses argv (argv[0] is the program name). Help goes to `out`, errors to `err`.
CommandLine ParseCommandLine(int argc, const char* const* argv, std::ostream& out,
                             std::ostream& err);

// REQUIRES: !command_line.exit_status.
// Connects to globals.target (lazily: no call is made until the subcommand's) and runs the
// subcommand; its exit status (kExitUsage when the target, a TLS file or the token file is
// unusable, or only one of --tls-cert and --tls-key is given).
// `report` runs without connecting.
int RunCommand(const CommandLine& command_line, std::ostream& out, std::ostream& err);

// The subcommands, in the order of --help.
std::vector<std::string> SubcommandNames();

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_COMMAND_LINE_H_
