// File: tests/support/loopback_http.h
//
// Plain-socket HTTP for the tests of the metrics endpoint: connect to 127.0.0.1, send a request as
// written, read the whole answer. No HTTP library, so a test can send what a library would refuse.
//
// Thread safety: plain functions.
#ifndef PAGEPOOL_TESTS_SUPPORT_LOOPBACK_HTTP_H_
#define PAGEPOOL_TESTS_SUPPORT_LOOPBACK_HTTP_H_

#include <unistd.h>

#include <cstdint>
#include <string>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace pagepool::testing {

// A connected socket to 127.0.0.1:port, or -1.
inline int ConnectLoopback(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` on a fresh connection, closes the sending side, and reads the whole answer
// ("" when the connection failed).
inline std::string AskLoopback(uint16_t port, const std::string& request) {
  int fd = ConnectLoopback(port);
  if (fd < 0) return "";
  (void)!write(fd, request.data(), request.size());
  shutdown(fd, SHUT_WR);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  close(fd);
  return out;
}

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_SUPPORT_LOOPBACK_HTTP_H_
