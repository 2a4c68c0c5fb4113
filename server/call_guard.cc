// File: server/call_guard.cc
#include "server/call_guard.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/strings.h"

namespace pagepool::server {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Walks all of b whatever a holds, so the time depends only on the sizes.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char ac = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff |= static_cast<unsigned char>(ac ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

std::string PeerAddress(std::string_view peer) {
  if (!absl::StartsWith(base::AbslView(peer), "ipv4:") &&
      !absl::StartsWith(base::AbslView(peer), "ipv6:")) {
    return std::string(peer);
  }
  const size_t colon = peer.rfind(':');
  if (colon <= 4) return std::string(peer);
  return std::string(peer.substr(0, colon));
}

absl::StatusOr<std::string> BearerToken::ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("auth-token-file '", path, "' cannot be read"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(ss.str()));
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("auth-token-file '", path, "' holds no token"));
  }
  return token;
}

absl::Status BearerToken::Check(const grpc::ServerContextBase& ctx, std::string_view call) const {
  if (token_.empty()) return absl::OkStatus();
  constexpr std::string_view kScheme = "bearer ";
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError(
        absl::StrCat(base::AbslView(call),
                     ": this daemon requires a bearer token: send the metadata "
                     "'authorization: Bearer <token>' (pagepoold --auth-token-file)"));
  }
  std::string_view value(it->second.data(), it->second.size());
  if (value.size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(base::AbslView(value.substr(0, kScheme.size())),
                              base::AbslView(kScheme)) ||
      !ConstantTimeEquals(value.substr(kScheme.size()), token_)) {
    return absl::UnauthenticatedError(
        absl::StrCat(base::AbslView(call),
                     ": the 'authorization' metadata is not 'Bearer <the daemon's token>'"));
  }
  return absl::OkStatus();
}

StreamLimiter::Slot& StreamLimiter::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    Release();
    limiter_ = std::exchange(other.limiter_, nullptr);
    peer_ = std::move(other.peer_);
  }
  return *this;
}

void StreamLimiter::Slot::Release() {
  if (limiter_ != nullptr) std::exchange(limiter_, nullptr)->Release(peer_);
}

absl::StatusOr<StreamLimiter::Slot> StreamLimiter::Acquire(std::string_view peer,
                                                           std::string_view call) {
  std::string address = PeerAddress(peer);
  base::MutexLock l(&mu_);
  if (max_total_ != 0 && open_ >= max_total_) {
    return absl::ResourceExhaustedError(absl::StrCat(base::AbslView(call), ": ", open_,
                                                     " streams are open, the limit (", max_total_,
                                                     ", --max-streams); end one first"));
  }
  uint32_t& mine = per_peer_[address];
  if (max_per_peer_ != 0 && mine >= max_per_peer_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        base::AbslView(call), ": ", mine, " streams from ", address, " are open, the limit (",
        max_per_peer_, ", --max-streams-per-peer); end one first"));
  }
  ++mine;
  ++open_;
  return Slot(this, std::move(address));
}

uint32_t StreamLimiter::open() const {
  base::MutexLock l(&mu_);
  return open_;
}

void StreamLimiter::Release(const std::string& peer) {
  base::MutexLock l(&mu_);
  --open_;
  auto it = per_peer_.find(peer);
  if (it != per_peer_.end() && --it->second == 0) per_peer_.erase(it);
}

}  // namespace pagepool::server
