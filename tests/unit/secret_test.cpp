#include "netloader/secret.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>
#include <thread>
#include <vector>

#include "tests/support/test_util.h"

namespace netloader {
namespace {

using testing::TempDir;

mode_t ModeOf(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 07777;
}

TEST(SecretTest, AMissingFileIsCreatedPrivateWithItsDirectoriesAndThenReused) {
  TempDir tmp;
  const std::string path = tmp / "a/b/secret";
  Result<std::string> first = LoadOrCreateSecret(path);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->size(), 40u);
  EXPECT_TRUE(ValidateSecret(*first).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_EQ(ModeOf(tmp / "a/b"), 0700u);
  Result<std::string> again = LoadOrCreateSecret(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *first);
  Result<std::string> elsewhere = LoadOrCreateSecret(tmp / "other");
  ASSERT_TRUE(elsewhere.ok());
  EXPECT_NE(*elsewhere, *first) << "each new secret is random";
}

TEST(SecretTest, ProcessesStartingTogetherAgreeOnOneSecret) {
  TempDir tmp;
  const std::string path = tmp / "secret";
  std::vector<std::string> seen(8);
  std::vector<std::thread> threads;
  for (auto& s : seen) {
    threads.emplace_back([&s, &path] {
      Result<std::string> r = LoadOrCreateSecret(path);
      s = r.ok() ? *r : "error";
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 1u);
  EXPECT_NE(seen[0], "error");
}

TEST(SecretTest, AFileOthersMayReadIsRefusedWithTheFix) {
  TempDir tmp;
  const std::string path = tmp / "secret";
  ASSERT_TRUE(LoadOrCreateSecret(path).ok());
  chmod(path.c_str(), 0644);
  Result<std::string> r = LoadOrCreateSecret(path);
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(r.status().message().find("mode 0644"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("chmod 600 " + path), std::string::npos);
}

TEST(SecretTest, SomethingThatIsNotASecretIsRefusedNamingTheFile) {
  TempDir tmp;
  const std::string path = tmp / "secret";
  testing::WriteFile(path, "hunter2\n");
  chmod(path.c_str(), 0600);
  Result<std::string> r = LoadOrCreateSecret(path);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("40 characters"), std::string::npos);
  EXPECT_EQ(LoadOrCreateSecret(tmp.path()).status().code(), StatusCode::kInvalidArgument)
      << "a directory";
  EXPECT_EQ(ValidateSecret(std::string(40, ' ')).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateSecret("").ok()) << "empty means no authentication";
}

// PROTOCOL.md, section 3: the key, then at most one line ending ("\n" or "\r\n", what editors
// write), nothing else. Anything else is refused, naming the file and what follows the key.
TEST(SecretTest, AcceptsExactlyOneTrailingLineEndingAndRefusesAnythingElse) {
  TempDir tmp;
  const std::string key = [&] {
    Result<std::string> made = LoadOrCreateSecret(tmp / "made");
    EXPECT_TRUE(made.ok()) << made.status().ToString();
    return made.ok() ? *made : std::string(40, 'x');
  }();
  auto load = [&](const std::string& name, const std::string& text) {
    const std::string path = tmp / name;
    testing::WriteFile(path, text);
    chmod(path.c_str(), 0600);
    return LoadOrCreateSecret(path);
  };
  for (const std::string& ending : {std::string(), std::string("\n"), std::string("\r\n")}) {
    Result<std::string> r = load("ok", key + ending);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, key) << "the line ending is not part of the key";
  }
  struct Bad {
    std::string text;
    std::string says;  // what the message must name
  };
  const std::vector<Bad> bad = {
      {key + "\n\n", "the key is followed by \"\\n\\n\", not by one line ending"},
      {key + "\r\n\r\n", "the key is followed by \"\\r\\n\\r\\n\", not by one line ending"},
      {key + "\r", "the key is followed by \"\\r\", not by one line ending"},
      {key + "\n\r", "the key is followed by \"\\n\\r\", not by one line ending"},
      {key + "\r\r\n", "the key is followed by \"\\r\\r\\n\", not by one line ending"},
      {key + "\n" + key + "\n", "the key is followed by 42 bytes that are more than a line ending"},
      {key + "\n" + std::string(200, 'k'), "followed by 201 bytes that are more than a line"},
      {"", "it is empty"},
      {"\n" + key, "its first line is empty"},
      {key + " \n", "got 41 characters"},
      {std::string(300, 'k'), "its first line is longer than 128 bytes"},
  };
  for (const Bad& b : bad) {
    Result<std::string> r = load("bad", b.text);
    ASSERT_FALSE(r.ok()) << b.says;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << b.says;
    const std::string& message = r.status().message();
    EXPECT_NE(message.find("secret file '" + (tmp / "bad") + "'"), std::string::npos) << message;
    EXPECT_NE(message.find(b.says), std::string::npos) << message;
    EXPECT_EQ(message.find(key), std::string::npos) << "the key is never quoted: " << message;
  }
}

TEST(SecretTest, TheDefaultPathFollowsTheEnvironment) {
  const char* saved = std::getenv("NETLOADER_SECRET_FILE");
  const std::string restore = saved ? saved : "";
  setenv("NETLOADER_SECRET_FILE", "/x/y", 1);
  EXPECT_EQ(DefaultSecretPath(), "/x/y");
  unsetenv("NETLOADER_SECRET_FILE");
  EXPECT_EQ(DefaultSecretPath(), std::string(std::getenv("HOME")) + "/.config/netloader/secret");
  if (!restore.empty()) setenv("NETLOADER_SECRET_FILE", restore.c_str(), 1);
}

}  // namespace
}  // namespace netloader
