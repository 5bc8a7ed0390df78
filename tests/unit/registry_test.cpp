// The registry's records and source selection (netloader/src/registry/record.h), and the etcd
// client's parsing of its URL and base64: pure functions, no etcd.

#include <gtest/gtest.h>

#include <map>

#include "netloader/src/registry/etcd.h"
#include "netloader/src/registry/record.h"

namespace netloader::registry {
namespace {

Record Holder(const std::string& endpoint, int free_slots = 4, const std::string& state = "ready") {
  Record r;
  r.endpoint = endpoint;
  r.generation = 100;
  r.model_id = "m@1";
  r.table_digest = "t";
  r.state = state;
  r.bytes_total = 1000;
  r.bytes_held = state == "ready" ? 1000 : 400;
  r.free_slots = free_slots;
  return r;
}

Wanted Want(const std::string& identity = "client-1") {
  Wanted w;
  w.model_id = "m@1";
  w.table_digest = "t";
  w.identity = identity;
  return w;
}

TEST(RegistryRecordTest, RoundTripsThroughJsonAndRefusesWhatIsNotARecord) {
  Record r = Holder("tcp://10.0.0.1:7000");
  r.partition = {2, 1, 2, 0, "experts-a"};
  r.topology = "rack-3";
  Result<Record> back = FromJson(ToJson(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->endpoint, r.endpoint);
  EXPECT_EQ(back->partition.layout_key, "experts-a");
  EXPECT_EQ(back->partition.tp_rank, 1);
  EXPECT_EQ(back->topology, "rack-3");
  EXPECT_EQ(back->bytes_held, 1000u);
  for (const auto& [text, why] :
       std::map<std::string, std::string>{{"not json", "not a JSON object"},
                                          {R"({"version": 2})", "record version 2"},
                                          {R"({"version": 1, "endpoint": "tcp://a:1"})", "missing"},
                                          {R"({"endpoint": "tcp://a:1"})", "no version"}}) {
    Result<Record> bad = FromJson(text);
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_NE(bad.status().message().find(why), std::string::npos) << bad.status().ToString();
  }
  Record udp = r;
  udp.endpoint = "udp://x:1";
  EXPECT_FALSE(FromJson(ToJson(udp)).ok());
  EXPECT_EQ(RecordKey("/netloader/", r), "/netloader/holders/tcp://10.0.0.1:7000/0000000000000064");
}

TEST(RegistryChooseTest, OnlyHoldersOfTheSameModelAndPartitionThatCanServe) {
  std::vector<Record> records = {Holder("tcp://a:1"),
                                 Holder("tcp://b:1"),
                                 Holder("tcp://c:1"),
                                 Holder("tcp://d:1", 4, "unavailable"),
                                 Holder("tcp://e:1", 4, "loading"),
                                 Holder("tcp://f:1", 4, "waiting"),
                                 Holder("tcp://self:1")};
  records[1].model_id = "other@1";
  records[2].partition.tp_rank = 1;
  records[4].bytes_held = 0;  // loading, but nothing yet: not ahead of anyone
  Wanted want = Want();
  want.self = "tcp://self:1";
  EXPECT_EQ(Choose(records, want), std::vector<std::string>{"tcp://a:1"});
  // Another table of the same model id (another revision's layout): not this one.
  records[0].table_digest = "u";
  EXPECT_TRUE(Choose(records, want).empty());
  // A partial load may take another pipeline split, and does not compare the table.
  records[0].partition.pp_size = 2;
  want.whole_model = false;
  EXPECT_EQ(Choose(records, want), std::vector<std::string>{"tcp://a:1"});
}

TEST(RegistryChooseTest, ReadyBeforeLoadingFreeBeforeBusyOwnTopologyFirst) {
  std::vector<Record> records = {Holder("tcp://loading:1", 4, "loading"), Holder("tcp://busy:1", 0),
                                 Holder("tcp://far:1"), Holder("tcp://near:1")};
  records[2].topology = "rack-b";
  records[3].topology = "rack-a";
  Wanted want = Want();
  want.topology = "rack-a";
  EXPECT_EQ(Choose(records, want), (std::vector<std::string>{"tcp://near:1", "tcp://far:1",
                                                             "tcp://busy:1", "tcp://loading:1"}));
}

TEST(RegistryChooseTest, TheLaterProcessOfAnEndpointWins) {
  Record old = Holder("tcp://a:1", 4, "unavailable");
  Record later = Holder("tcp://a:1");
  later.generation = old.generation + 1;
  EXPECT_EQ(Choose({old, later}, Want()), std::vector<std::string>{"tcp://a:1"});
  old.state = "ready";
  later.state = "unavailable";
  EXPECT_TRUE(Choose({old, later}, Want()).empty()) << "the dead process's record loses";
}

// Rendezvous hashing: clients spread over equal holders in proportion to their free slots, and
// a holder that leaves moves only its own clients.
TEST(RegistryChooseTest, ABurstSpreadsByFreeSlotsAndADepartureMovesOnlyItsClients) {
  std::vector<Record> records = {Holder("tcp://a:1", 2), Holder("tcp://b:1", 2),
                                 Holder("tcp://c:1", 2), Holder("tcp://d:1", 6)};
  std::map<std::string, int> first;
  std::map<std::string, std::string> choice;
  constexpr int kClients = 2000;
  // Free slots do not order here (all > 0): they weight the hash.
  for (int i = 0; i < kClients; ++i) {
    const std::string id = "client-" + std::to_string(i);
    choice[id] = Choose(records, Want(id)).front();
    ++first[choice[id]];
  }
  for (const char* e : {"tcp://a:1", "tcp://b:1", "tcp://c:1"}) {
    EXPECT_NEAR(first[e], kClients * 2 / 12, kClients / 25) << e;
  }
  EXPECT_NEAR(first["tcp://d:1"], kClients * 6 / 12, kClients / 25);
  records.erase(records.begin() + 1);  // b leaves
  for (const auto& [id, was] : choice) {
    const std::string now = Choose(records, Want(id)).front();
    if (was != "tcp://b:1") {
      EXPECT_EQ(now, was) << id;
    }
  }
}

TEST(RegistryEtcdTest, TheUrlNamesHostPortAndPrefix) {
  Result<Etcd> plain = Etcd::Parse("http://127.0.0.1:2379");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->prefix(), "/netloader/");
  Result<Etcd> fleet = Etcd::Parse("http://etcd.example:2379/fleet-a/");
  ASSERT_TRUE(fleet.ok());
  EXPECT_EQ(fleet->prefix(), "/fleet-a/");
  for (const char* bad : {"https://etcd:2379", "etcd:2379", "http://etcd", "http://etcd:0",
                          "http://etcd:99999", "http://:2379"}) {
    Result<Etcd> parsed = Etcd::Parse(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find(bad), std::string::npos) << parsed.status().ToString();
  }
}

TEST(RegistryEtcdTest, Base64RoundTrips) {
  for (const std::string& s :
       std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
    std::string back;
    ASSERT_TRUE(FromBase64(Base64(s), &back));
    EXPECT_EQ(back, s);
  }
  EXPECT_EQ(Base64("/nl/a"), "L25sL2E=");
  std::string out;
  EXPECT_FALSE(FromBase64("ab!c", &out));
}

}  // namespace
}  // namespace netloader::registry
