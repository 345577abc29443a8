// The persistence model of CrashEnv itself: what survives a crash, what may not, and that
// every state a crash can leave is reachable by some choice.
#include "blockstore/crash_env.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::TempDir;

constexpr uint64_t kBlock = 4096;

// The real file's bytes, or "<missing>".
std::string Contents(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return "<missing>";
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
}

std::string Blocks(const std::string& letters) {
  std::string out;
  for (char c : letters) out += std::string(kBlock, c);
  return out;
}

class CrashEnvTest : public ::testing::Test {
 protected:
  // A file `name` holding `data`, durable, known to the env.
  std::string Durable(const std::string& name, const std::string& data) {
    std::string path = dir_.File(name);
    testing::WriteFileBytes(path, data);
    EXPECT_TRUE(env_.Import(dir_.path()).ok());
    return path;
  }
  std::unique_ptr<File> OpenFile(const std::string& path, bool create = false) {
    auto file = env_.Open(path, {.writable = true, .create = create});
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? std::move(*file) : nullptr;
  }
  // What each crash state of `point` leaves in `path`.
  std::set<std::string> Outcomes(const CrashPoint& point, const std::string& path) {
    std::set<std::string> seen;
    for (const CrashChoice& choice : point.Choices(1 << 12, 0, 0)) {
      auto crashed = env_.Crash(point, choice);
      EXPECT_TRUE(crashed.ok()) << crashed.status();
      seen.insert(Contents(path));
    }
    return seen;
  }

  TempDir dir_;
  CrashEnv env_;
};

TEST_F(CrashEnvTest, SyncedWriteSurvivesEveryChoice) {
  std::string path = Durable("f", Blocks("aaaa"));
  std::string other = Durable("g", Blocks("x"));
  {
    auto file = OpenFile(path);
    ASSERT_TRUE(file->Write(kBlock, Blocks("bb")).ok());
    ASSERT_TRUE(file->Sync().ok());
    auto pending = OpenFile(other);
    ASSERT_TRUE(pending->Write(0, Blocks("yy")).ok());  // something for the crash to choose
  }
  CrashPoint point = env_.Point();
  EXPECT_EQ(point.pending().blocks, 2u);
  EXPECT_EQ(point.pending().size_changes, 1u);
  EXPECT_EQ(point.states(), 8u);
  EXPECT_EQ(Outcomes(point, path), std::set<std::string>{Blocks("abba")});
}

TEST_F(CrashEnvTest, UnsyncedWriteMayKeepAnySubsetOfItsBlocks) {
  std::string path = Durable("f", Blocks("aaa"));
  OpenFile(path)->Write(0, Blocks("bbb")).IgnoreError();
  CrashPoint point = env_.Point();
  ASSERT_EQ(point.states(), 8u);
  // Every subset, among them block 2 without block 1, and nothing else.
  EXPECT_EQ(Outcomes(point, path),
            (std::set<std::string>{Blocks("aaa"), Blocks("baa"), Blocks("aba"), Blocks("aab"),
                                   Blocks("bba"), Blocks("bab"), Blocks("abb"), Blocks("bbb")}));
}

TEST_F(CrashEnvTest, LaterWritesOfABlockMaySurviveWithoutEarlierOnes) {
  std::string path = Durable("f", Blocks("a"));
  {
    auto file = OpenFile(path);
    ASSERT_TRUE(file->Write(0, Blocks("b")).ok());
    ASSERT_TRUE(file->Write(0, Blocks("c")).ok());
  }
  EXPECT_EQ(Outcomes(env_.Point(), path),
            (std::set<std::string>{Blocks("a"), Blocks("b"), Blocks("c")}));
}

TEST_F(CrashEnvTest, RandomStatesTearBlocksAtSectorsOnly) {
  std::string path = Durable("f", Blocks("aaaa"));
  OpenFile(path)->Write(0, Blocks("bbbb")).IgnoreError();
  CrashPoint point = env_.Point();
  int torn = 0;
  for (const CrashChoice& choice : point.Choices(0, 200, 7)) {
    ASSERT_TRUE(env_.Crash(point, choice).ok());
    std::string got = Contents(path);
    ASSERT_EQ(got.size(), 4 * kBlock);
    for (uint64_t b = 0; b < 4; ++b) {
      std::string block = got.substr(b * kBlock, kBlock);
      bool mixed = block != std::string(kBlock, 'a') && block != std::string(kBlock, 'b');
      torn += mixed;
      for (uint64_t s = 0; s < kBlock; s += 512) {
        std::string sector = block.substr(s, 512);
        EXPECT_TRUE(sector == std::string(512, 'a') || sector == std::string(512, 'b'))
            << choice.ToString() << ": block " << b << " sector " << s / 512;
      }
    }
  }
  EXPECT_GT(torn, 0) << "200 random states tore no block";
}

TEST_F(CrashEnvTest, CreatedFileWithoutSyncDirCanVanish) {
  std::string path = dir_.File("new");
  {
    auto file = OpenFile(path, /*create=*/true);
    ASSERT_TRUE(file->Write(0, "hello").ok());
    ASSERT_TRUE(file->Sync().ok());  // the data, not the name
  }
  CrashPoint point = env_.Point();
  EXPECT_EQ(point.pending().metadata_ops, 1u);
  EXPECT_EQ(Outcomes(point, path), (std::set<std::string>{"<missing>", "hello"}));
  ASSERT_TRUE(env_.Crash(point, CrashChoice::Everything()).ok());
  // Once the directory is synced the file stays.
  ASSERT_TRUE(env_.SyncDir(dir_.path()).ok());
  OpenFile(path)->Write(0, "HELLO").IgnoreError();
  EXPECT_EQ(Outcomes(env_.Point(), path), (std::set<std::string>{"hello", "HELLO"}));
}

TEST_F(CrashEnvTest, RenameWithoutSyncDirCanBeUndone) {
  std::string a = Durable("a", "old a"), b = Durable("b", "old b");
  ASSERT_TRUE(env_.Rename(a, b).ok());
  CrashPoint point = env_.Point();
  ASSERT_TRUE(env_.Crash(point, CrashChoice::Nothing()).ok());
  EXPECT_EQ(Contents(a), "old a");
  EXPECT_EQ(Contents(b), "old b");
  ASSERT_TRUE(env_.Crash(point, CrashChoice::Everything()).ok());
  EXPECT_EQ(Contents(a), "<missing>");
  EXPECT_EQ(Contents(b), "old a");
  ASSERT_TRUE(env_.Rename(b, a).ok());
  ASSERT_TRUE(env_.SyncDir(dir_.path()).ok());
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());
  EXPECT_EQ(Contents(a), "old a");
  EXPECT_EQ(Contents(b), "<missing>");
}

TEST_F(CrashEnvTest, RemovedNameComesBackWithItsDurableContent) {
  std::string path = Durable("f", "kept");
  {
    auto file = OpenFile(path);
    ASSERT_TRUE(file->Write(0, "lost").ok());  // never synced
  }
  ASSERT_TRUE(env_.Remove(path).ok());
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());
  EXPECT_EQ(Contents(path), "kept");
}

TEST_F(CrashEnvTest, TruncateWithoutSyncCanBeUndone) {
  std::string path = Durable("f", Blocks("abc"));
  {
    auto file = OpenFile(path);
    ASSERT_TRUE(file->Truncate(kBlock).ok());
  }
  CrashPoint point = env_.Point();
  EXPECT_EQ(point.pending().size_changes, 1u);
  EXPECT_EQ(Outcomes(point, path), (std::set<std::string>{Blocks("abc"), Blocks("a")}));
}

TEST_F(CrashEnvTest, SizeChangesPersistInOrder) {
  std::string path = Durable("f", Blocks("a"));
  {
    auto file = OpenFile(path);
    ASSERT_TRUE(file->Allocate(0, 3 * kBlock).ok());  // growth
    ASSERT_TRUE(file->Truncate(2 * kBlock).ok());     // then a shrink
  }
  // Never the shrink without the growth before it; the grown space reads as zeros.
  EXPECT_EQ(Outcomes(env_.Point(), path),
            (std::set<std::string>{Blocks("a"), Blocks("a") + std::string(2 * kBlock, '\0'),
                                   Blocks("a") + std::string(kBlock, '\0')}));
}

TEST_F(CrashEnvTest, WritePastTheEndNeedsItsSizeChange) {
  std::string path = Durable("f", Blocks("a"));
  OpenFile(path)->Write(kBlock, Blocks("b")).IgnoreError();
  EXPECT_EQ(Outcomes(env_.Point(), path),
            (std::set<std::string>{Blocks("a"), Blocks("a") + std::string(kBlock, '\0'),
                                   Blocks("ab")}));
}

TEST_F(CrashEnvTest, PunchedHolePersistsWholeOrNotAtAll) {
  std::string path = Durable("f", Blocks("abc"));
  OpenFile(path)->PunchHole(0, 3 * kBlock).IgnoreError();
  EXPECT_EQ(Outcomes(env_.Point(), path),
            (std::set<std::string>{Blocks("abc"), std::string(3 * kBlock, '\0')}));
}

TEST_F(CrashEnvTest, SyncDirMakesTheLogDurableUpToItsLastOperation) {
  TempDir other;
  std::string a = dir_.File("a"), b = other.File("b"), c = dir_.File("c");
  OpenFile(a, true).reset();
  OpenFile(b, true).reset();
  OpenFile(c, true).reset();
  ASSERT_TRUE(env_.SyncDir(other.path()).ok());  // a (before b) and b, not c
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());
  EXPECT_EQ(Contents(a), "");
  EXPECT_EQ(Contents(b), "");
  EXPECT_EQ(Contents(c), "<missing>");
}

TEST_F(CrashEnvTest, HardLinksStayHardLinks) {
  std::string a = Durable("a", "shared");
  std::string b = dir_.File("b");
  ASSERT_TRUE(env_.Link(a, b).ok());
  ASSERT_TRUE(env_.SyncDir(dir_.path()).ok());
  OpenFile(a)->Write(0, "SHARED").IgnoreError();  // pending: the file is rewritten
  ASSERT_TRUE(env_.Crash(CrashChoice::Everything()).ok());
  struct stat sa, sb;
  ASSERT_EQ(stat(a.c_str(), &sa), 0);
  ASSERT_EQ(stat(b.c_str(), &sb), 0);
  EXPECT_EQ(sa.st_ino, sb.st_ino);
  EXPECT_EQ(sa.st_nlink, 2u);
  EXPECT_EQ(Contents(b), "SHARED");
}

TEST_F(CrashEnvTest, MultiRunCrashesBuildOnEachOther) {
  std::string path = Durable("f", Blocks("aa"));
  CrashPoint start = env_.Point();
  OpenFile(path)->Write(0, Blocks("b")).IgnoreError();
  ASSERT_TRUE(env_.Crash(CrashChoice::Everything()).ok());  // run 1: the write persisted
  {
    auto file = OpenFile(path);
    ASSERT_TRUE(file->Write(kBlock, Blocks("c")).ok());
    ASSERT_TRUE(file->Sync().ok());
    ASSERT_TRUE(file->Write(0, Blocks("d")).ok());
  }
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());  // run 2: only what it synced
  EXPECT_EQ(Contents(path), Blocks("bc"));
  // An earlier point can still be crashed into: the same state, the same fingerprint.
  auto first = env_.Crash(start, CrashChoice::Nothing());
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Contents(path), Blocks("aa"));
  auto again = env_.Crash(start, CrashChoice::Nothing());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*first, *again);
}

TEST_F(CrashEnvTest, PowerCutFailsTheSyncPointAndEverythingAfter) {
  std::string path = Durable("f", Blocks("a"));
  auto file = OpenFile(path);
  env_.CutPowerAtSync(1);
  ASSERT_TRUE(file->Write(0, Blocks("b")).ok());
  ASSERT_TRUE(file->Sync().ok());  // sync point 0
  ASSERT_TRUE(file->Write(0, Blocks("c")).ok());
  absl::Status s = file->Sync();  // sync point 1: the power goes
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(env_.power_cut());
  EXPECT_EQ(file->Write(0, "x").code(), absl::StatusCode::kUnavailable);
  char c;
  EXPECT_EQ(file->Read(0, 1, &c).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(env_.Rename(path, path + "2").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(env_.Crash(CrashChoice::Nothing()).status().code(),
            absl::StatusCode::kFailedPrecondition);  // a file is still open
  file.reset();
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());
  EXPECT_FALSE(env_.power_cut());
  EXPECT_EQ(Contents(path), Blocks("b"));
}

TEST_F(CrashEnvTest, FailedSyncsLeaveTheProcessRunning) {
  std::string path = Durable("f", Blocks("a"));
  auto file = OpenFile(path);
  env_.FailSyncsAfter(1);
  ASSERT_TRUE(file->Sync().ok());
  EXPECT_EQ(file->Sync().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(env_.SyncDir(dir_.path()).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(file->Write(0, Blocks("b")).ok());
  env_.FailSyncsAfter(-1);
  EXPECT_TRUE(file->Sync().ok());
}

TEST_F(CrashEnvTest, CopyRangeIsWritesOfTheTarget) {
  std::string from = Durable("from", Blocks("xy")), to = Durable("to", Blocks("aa"));
  {
    auto src = OpenFile(from), dst = OpenFile(to);
    ASSERT_TRUE(env_.CopyRange(src.get(), 0, dst.get(), 0, 2 * kBlock).ok());
  }
  EXPECT_EQ(Outcomes(env_.Point(), to),
            (std::set<std::string>{Blocks("aa"), Blocks("xa"), Blocks("ay"), Blocks("xy")}));
}

TEST_F(CrashEnvTest, DirectOpensAndDescriptorsShareTheInode) {
  std::string path = Durable("f", Blocks("aa"));
  auto file = OpenFile(path);
  auto direct = env_.Open(path, {.writable = true, .direct_io = true});
  ASSERT_TRUE(direct.ok()) << direct.status();
  File* by_fd = env_.FileForFd((*direct)->fd());
  ASSERT_EQ(by_fd, direct->get());
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, kBlock, kBlock), 0);
  memset(buf, 'b', kBlock);
  ASSERT_TRUE(by_fd->Write(kBlock, absl::string_view(static_cast<char*>(buf), kBlock)).ok());
  free(buf);
  ASSERT_TRUE(file->Sync().ok());  // fdatasync of any descriptor syncs the inode
  file.reset();
  direct->reset();
  EXPECT_EQ(env_.FileForFd(-1), nullptr);
  ASSERT_TRUE(env_.Crash(CrashChoice::Nothing()).ok());
  EXPECT_EQ(Contents(path), Blocks("ab"));
}

}  // namespace
}  // namespace strata
