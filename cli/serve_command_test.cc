#include "cli/serve_command.h"

#include <stdlib.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata::cli {
namespace {

TEST(ServeOptionsTest, DefaultsWithOnlyALayer) {
  auto o = ParseServeOptions({"disk.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->layer, "disk.strata");
  EXPECT_FALSE(o->socket.has_value());
  EXPECT_EQ(o->socket_mode, 0600u);
  EXPECT_FALSE(o->listen_address.has_value());
  EXPECT_EQ(o->export_name, "");
  EXPECT_FALSE(o->read_only);
  EXPECT_EQ(o->cache, CacheMode::kWriteback);
  EXPECT_EQ(o->workers, 0);
  EXPECT_EQ(o->log_level, LogLevel::kInfo);
  EXPECT_FALSE(o->foreground);
  EXPECT_EQ(o->shutdown_timeout_s, 10);
  EXPECT_EQ(o->max_connections, 0);  // from the open-file limit
  EXPECT_EQ(o->max_handshakes, 64);
  EXPECT_EQ(o->max_buffer_memory, 256u << 20);
  EXPECT_EQ(o->handshake_timeout_s, 10);
  EXPECT_EQ(o->request_timeout_s, 30);
}

TEST(ServeOptionsTest, EveryOptionInBothSpellings) {
  auto o = ParseServeOptions({"--socket", "/tmp/s.sock", "--socket-mode=0660", "--listen",
                              ":10809", "--export-name=vm", "--read-only", "--cache", "none",
                              "--workers=3", "--log-level", "debug", "--pid-file", "/tmp/p",
                              "--shutdown-timeout", "2", "--max-connections=10",
                              "--max-handshakes", "3", "--max-buffer-memory", "1G",
                              "--handshake-timeout=0", "--request-timeout", "5", "--foreground",
                              "/img/top.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(*o->socket, "/tmp/s.sock");
  EXPECT_EQ(o->socket_mode, 0660u);
  EXPECT_EQ(*o->listen_address, "127.0.0.1");
  EXPECT_EQ(o->listen_port, 10809);
  EXPECT_EQ(o->export_name, "vm");
  EXPECT_TRUE(o->read_only);
  EXPECT_EQ(o->cache, CacheMode::kNone);
  EXPECT_EQ(o->workers, 3);
  EXPECT_EQ(o->log_level, LogLevel::kDebug);
  EXPECT_EQ(o->pid_file, "/tmp/p");
  EXPECT_EQ(o->shutdown_timeout_s, 2);
  EXPECT_EQ(o->max_connections, 10);
  EXPECT_EQ(o->max_handshakes, 3);
  EXPECT_EQ(o->max_buffer_memory, 1u << 30);
  EXPECT_EQ(o->handshake_timeout_s, 0);
  EXPECT_EQ(o->request_timeout_s, 5);
  EXPECT_TRUE(o->foreground);
  EXPECT_EQ(o->layer, "/img/top.strata");
}

// Issue 13: every --allow-parent-dir counts (a repeated option otherwise keeps its last
// value), then STRATA_ALLOW_PARENT_DIR's entries.
TEST(ServeOptionsTest, AllowParentDirRepeatsAndTheEnvironmentAdds) {
  setenv("STRATA_ALLOW_PARENT_DIR", "/srv/c::/srv/d", 1);
  auto o = ParseServeOptions({"--allow-parent-dir", "/srv/a", "--allow-parent-dir=/srv/b",
                              "d.strata"});
  unsetenv("STRATA_ALLOW_PARENT_DIR");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->allowed_parent_dirs,
            (std::vector<std::string>{"/srv/a", "/srv/b", "/srv/c", "/srv/d"}));
}

TEST(ServeOptionsTest, RunImpliesForeground) {
  auto o = ParseServeOptions({"--run", "nbdinfo $uri", "d.strata"});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->run, "nbdinfo $uri");
  EXPECT_TRUE(o->foreground);
}

TEST(ServeOptionsTest, ListenTakesAddressAndPort) {
  auto o = ParseServeOptions({"--listen=192.0.2.7:0", "d"});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(*o->listen_address, "192.0.2.7");
  EXPECT_EQ(o->listen_port, 0);
  auto v6 = ParseServeOptions({"--listen=[::1]:99", "d"});
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(*v6->listen_address, "[::1]");
}

// Issue 13: a wildcard address served every interface in the clear without a word.
TEST(ServeOptionsTest, WildcardListenNeedsTlsOrInsecureListen) {
  for (const char* address : {"0.0.0.0", "[::]", "[0:0::0]", "*"}) {
    auto refused = ParseServeOptions({"--listen", absl::StrCat(address, ":10809"), "d"});
    ASSERT_FALSE(refused.ok()) << address;
    EXPECT_NE(refused.status().message().find("--insecure-listen"), std::string::npos);
    EXPECT_NE(refused.status().message().find("--tls-certs"), std::string::npos);
    EXPECT_TRUE(
        ParseServeOptions({"--listen", absl::StrCat(address, ":1"), "--insecure-listen", "d"})
            .ok());
    EXPECT_TRUE(
        ParseServeOptions({"--listen", absl::StrCat(address, ":1"), "--tls-psk=k", "d"}).ok());
    EXPECT_FALSE(ParseServeOptions({"--listen", absl::StrCat(address, ":1"), "--tls-psk=k",
                                    "--tls=on", "d"})
                     .ok());
  }
  EXPECT_TRUE(ParseServeOptions({"--listen=:10809", "d"}).ok());  // 127.0.0.1
  EXPECT_TRUE(ParseServeOptions({"--listen=[::1]:10809", "d"}).ok());
}

TEST(ServeOptionsTest, CredentialsRequireTlsUnlessTlsSaysOtherwise) {
  auto o = ParseServeOptions({"--tls-certs=pki", "d"});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->tls, TlsMode::kRequire);
  EXPECT_EQ(o->tls_certs, "pki");
  o = ParseServeOptions({"--tls-psk", "keys.psk", "--tls=on", "d"});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->tls, TlsMode::kOn);
  o = ParseServeOptions({"d"});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->tls, TlsMode::kOff);
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--tls=require", "d"},
           {"--tls=maybe", "--tls-psk=k", "d"},
           {"--tls-certs=pki", "--tls-psk=k", "d"},
           {"--tls-verify-peer", "--tls-psk=k", "d"}}) {
    EXPECT_FALSE(ParseServeOptions(args).ok()) << args[0];
  }
}

TEST(ServeOptionsTest, TlsUrisAreNbds) {
  EXPECT_EQ(TcpUri("127.0.0.1", 10809, "", true), "nbds://127.0.0.1:10809/");
  EXPECT_EQ(UnixUri("/r/d.sock", "", true), "nbds+unix:///?socket=/r/d.sock");
}

TEST(ServeOptionsTest, BadValuesAreRefusedWithTheOptionName) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--cache=sometimes", "d"},
           {"--workers=0", "d"},
           {"--workers", "many", "d"},
           {"--socket-mode=999", "d"},
           {"--listen=nowhere", "d"},
           {"--listen=:70000", "d"},
           {"--log-level=loud", "d"},
           {"--shutdown-timeout=-1", "d"},
           {"--shutdown-timeout=soon", "d"},
           {"--max-connections=0", "d"},
           {"--max-connections=lots", "d"},
           {"--max-handshakes=-3", "d"},
           {"--max-buffer-memory=32M", "d"},  // below two 32 MiB requests
           {"--max-buffer-memory=lots", "d"},
           {"--handshake-timeout=-1", "d"},
           {"--request-timeout=86401", "d"},
           {"--read-only=yes", "d"},
           {"--on-full=wait", "d"},
           {"--full-timeout=0", "d"},
           {"--min-free=lots", "d"},
           {"--bogus", "d"},
           {"--socket"},
           {},
           {"a", "b"}}) {
    auto o = ParseServeOptions(args);
    EXPECT_FALSE(o.ok()) << (args.empty() ? "(none)" : args[0]);
  }
  EXPECT_NE(ParseServeOptions({"--cache=x", "d"}).status().message().find("--cache"),
            std::string::npos);
}

TEST(ServeOptionsTest, FullVolumeOptions) {
  auto o = ParseServeOptions({"d"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->full_volume.mode, FullVolumePolicy::Mode::kError);
  EXPECT_EQ(o->full_volume.max_wait_ns, 300'000'000'000);
  EXPECT_EQ(o->full_volume.min_free_bytes, 1ull << 30);
  o = ParseServeOptions({"--on-full=pause", "--full-timeout", "7", "--min-free=512M", "d"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->full_volume.mode, FullVolumePolicy::Mode::kPause);
  EXPECT_EQ(o->full_volume.max_wait_ns, 7'000'000'000);
  EXPECT_EQ(o->full_volume.min_free_bytes, 512ull << 20);
  EXPECT_EQ(o->shutdown_timeout_s, 10) << "--full-timeout must not set the shutdown timeout";
}

TEST(ServeOptionsTest, DefaultMaxConnectionsLeavesRoomForLayersAndControlClients) {
  EXPECT_EQ(DefaultMaxConnections(20000, 10), 1024);         // capped
  EXPECT_EQ(DefaultMaxConnections(1024, 8), 1024 - 128 - 32);  // the usual soft limit
  EXPECT_EQ(DefaultMaxConnections(1024, 200), 512);          // deep chain: half the limit
  EXPECT_EQ(DefaultMaxConnections(64, 5), 32);
  EXPECT_EQ(DefaultMaxConnections(1, 5), 1);
}

TEST(ServeOptionsTest, DoubleDashEndsOptions) {
  auto o = ParseServeOptions({"--", "--weird-name.strata"});
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->layer, "--weird-name.strata");
}

TEST(ServeOptionsTest, HelpNeedsNoLayer) {
  auto o = ParseServeOptions({"--help"});
  ASSERT_TRUE(o.ok());
  EXPECT_TRUE(o->help);
}

TEST(ServeOptionsTest, DefaultSocketSitsBesideTheLayer) {
  EXPECT_EQ(DefaultSocketPath("/img/disk.strata"), "/img/disk.sock");
  EXPECT_EQ(DefaultSocketPath("disk.strata"), "./disk.sock");
  EXPECT_EQ(DefaultSocketPath("/a.b/disk"), "/a.b/disk.sock");
  EXPECT_EQ(DefaultSocketPath("/top.x.strata"), "/top.x.sock");
}

TEST(ServeOptionsTest, ControlSocketOptions) {
  EXPECT_EQ(DefaultControlPath("/img/disk.strata"), "/img/disk.ctl");
  EXPECT_EQ(DefaultControlPath("disk.strata"), "./disk.ctl");
  auto o = ParseServeOptions({"disk.strata"});
  ASSERT_TRUE(o.ok());
  EXPECT_FALSE(o->control.has_value());
  EXPECT_FALSE(o->no_control);
  o = ParseServeOptions({"--control=/run/vm.ctl", "disk.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(*o->control, "/run/vm.ctl");
  o = ParseServeOptions({"--no-control", "disk.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->no_control);
  EXPECT_FALSE(ParseServeOptions({"--no-control", "--control", "x", "disk.strata"}).ok());
  EXPECT_FALSE(ParseServeOptions({"--control=", "disk.strata"}).ok());
  EXPECT_FALSE(ParseServeOptions({"--no-control=1", "disk.strata"}).ok());
}

TEST(ServeOptionsTest, UrisAreEncoded) {
  EXPECT_EQ(UnixUri("/tmp/d.sock", ""), "nbd+unix:///?socket=/tmp/d.sock");
  EXPECT_EQ(UnixUri("/tmp/a b.sock", "vm 1"), "nbd+unix:///vm%201?socket=/tmp/a%20b.sock");
  EXPECT_EQ(TcpUri("127.0.0.1", 10809, ""), "nbd://127.0.0.1:10809/");
  EXPECT_EQ(TcpUri("::1", 5, "x"), "nbd://[::1]:5/x");
}

TEST(ServeOptionsTest, LogGoesToStderrInTheForegroundAndSyslogInTheBackground) {
  auto fg = ParseServeOptions({"--foreground", "d.strata"});
  ASSERT_TRUE(fg.ok()) << fg.status();
  EXPECT_EQ(fg->log, LogTo::kStderr);
  auto run = ParseServeOptions({"--run", "true", "d.strata"});
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->log, LogTo::kStderr);
  auto bg = ParseServeOptions({"d.strata"});
  ASSERT_TRUE(bg.ok()) << bg.status();
  EXPECT_EQ(bg->log, LogTo::kSyslog);
}

TEST(ServeOptionsTest, LogFileImpliesLogEqualsFile) {
  auto o = ParseServeOptions({"--log-file", "srv.log", "d.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->log, LogTo::kFile);
  EXPECT_EQ(o->log_file, "srv.log");
  o = ParseServeOptions({"--log=file", "--log-file=/l", "--foreground", "d.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->log, LogTo::kFile);
  o = ParseServeOptions({"--log", "file", "d.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->log_file, "");  // DefaultLogPath(layer) once resolved
  EXPECT_EQ(DefaultLogPath("/img/disk.strata"), "/img/disk.log");
  o = ParseServeOptions({"--log=stderr", "d.strata"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->log, LogTo::kStderr);
}

TEST(ServeOptionsTest, BadLogOptionsAreRefused) {
  EXPECT_NE(ParseServeOptions({"--log=journal", "d"}).status().message().find("--log"),
            std::string::npos);
  EXPECT_NE(ParseServeOptions({"--log=syslog", "--log-file", "f", "d"})
                .status()
                .message()
                .find("contradict"),
            std::string::npos);
  EXPECT_FALSE(ParseServeOptions({"--log-file=", "d"}).ok());
}

}  // namespace
}  // namespace strata::cli
