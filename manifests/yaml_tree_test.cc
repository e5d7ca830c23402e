#include "manifests/yaml_tree.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::manifests {
namespace {

using ::testing::HasSubstr;

TEST(YamlTreeTest, KeepsPositionsOneBased) {
  YamlTree t = YamlTree::Parse("a: 1\nb:\n  c: [x, \"y\"]\n");
  ASSERT_TRUE(t.errors().empty());
  ASSERT_EQ(t.documents().size(), 1u);
  const YamlNode& root = *t.documents()[0];
  ASSERT_EQ(root.kind, YamlNode::Kind::kMap);
  ASSERT_EQ(root.entries.size(), 2u);
  EXPECT_EQ(root.entries[0].second->pos.line, 1);
  EXPECT_EQ(root.entries[0].second->pos.column, 4);
  const YamlNode& c = *root.entries[1].second->entries[0].second;
  ASSERT_EQ(c.kind, YamlNode::Kind::kSequence);
  EXPECT_EQ(c.items[1]->pos.line, 3);
  EXPECT_EQ(c.items[1]->pos.column, 10);
  EXPECT_FALSE(c.items[0]->quoted);
  EXPECT_TRUE(c.items[1]->quoted);
}

TEST(YamlTreeTest, MultipleDocumentsAndEmptyOnes) {
  YamlTree t = YamlTree::Parse("a: 1\n---\n---\nb: 2\n");
  ASSERT_TRUE(t.errors().empty());
  ASSERT_EQ(t.documents().size(), 3u);
  EXPECT_EQ(t.documents()[1]->kind, YamlNode::Kind::kNull);
  EXPECT_EQ(t.documents()[2]->entries[0].first->value, "b");
}

TEST(YamlTreeTest, NullValues) {
  YamlTree t = YamlTree::Parse("a:\nb: ~\nc: null\n");
  const YamlNode& root = *t.documents()[0];
  for (const auto& [k, v] : root.entries) EXPECT_EQ(v->kind, YamlNode::Kind::kNull) << k->value;
}

TEST(YamlTreeTest, AliasToCompleteNodeIsShared) {
  YamlTree t = YamlTree::Parse("a: &x {k: v}\nb: *x\n");
  ASSERT_TRUE(t.errors().empty());
  const YamlNode& root = *t.documents()[0];
  EXPECT_EQ(root.entries[0].second, root.entries[1].second);
}

TEST(YamlTreeTest, RejectsRecursiveAlias) {
  YamlTree t = YamlTree::Parse("a: &x [1, *x]\n");
  ASSERT_EQ(t.errors().size(), 1u);
  EXPECT_THAT(t.errors()[0].message, HasSubstr("recursive"));
  EXPECT_EQ(t.errors()[0].pos.line, 1);
  EXPECT_EQ(t.errors()[0].pos.column, 11);  // the "*x"
}

TEST(YamlTreeTest, RejectsRecursiveMapAlias) {
  YamlTree t = YamlTree::Parse("&x {a: *x}\n");
  ASSERT_EQ(t.errors().size(), 1u);
  EXPECT_THAT(t.errors()[0].message, HasSubstr("recursive"));
}

TEST(YamlTreeTest, UnknownAliasIsAnError) {
  YamlTree t = YamlTree::Parse("a: *nope\n");
  ASSERT_EQ(t.errors().size(), 1u);
  EXPECT_EQ(t.errors()[0].pos.line, 1);
}

TEST(YamlTreeTest, SyntaxErrorHasPosition) {
  YamlTree t = YamlTree::Parse("a: 1\nb: [1, 2\nc: 3\n");
  ASSERT_EQ(t.errors().size(), 1u);
  EXPECT_THAT(t.errors()[0].message, HasSubstr("YAML syntax error"));
  EXPECT_GE(t.errors()[0].pos.line, 2);
}

TEST(YamlTreeTest, NodeLimit) {
  std::string text = "[";
  for (int i = 0; i < 100; ++i) text += "1,";
  text += "1]";
  YamlTree t = YamlTree::Parse(text, 50);
  ASSERT_EQ(t.errors().size(), 1u);
  EXPECT_THAT(t.errors()[0].message, HasSubstr("too many YAML nodes"));
}

TEST(YamlTreeTest, DeepNestingFailsCleanly) {
  std::string text(100000, '[');
  YamlTree t = YamlTree::Parse(text);
  EXPECT_FALSE(t.errors().empty());
}

TEST(CheckYamlTextTest, AcceptsUtf8) {
  YamlError e;
  EXPECT_TRUE(CheckYamlText("name: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n", &e));
  EXPECT_TRUE(CheckYamlText("\xef\xbb\xbf" "a: 1\n", &e));  // BOM
}

TEST(CheckYamlTextTest, RejectsBadUtf8WithPosition) {
  YamlError e;
  ASSERT_FALSE(CheckYamlText("a: 1\nb: x\xff\n", &e));
  EXPECT_EQ(e.pos.line, 2);
  EXPECT_EQ(e.pos.column, 5);
  EXPECT_EQ(e.message, "file is not valid UTF-8 (byte 0xff)");
  EXPECT_FALSE(CheckYamlText("\xc0\xaf", &e));          // overlong
  EXPECT_FALSE(CheckYamlText("\xed\xa0\x80", &e));      // surrogate
  EXPECT_FALSE(CheckYamlText("\xe2\x82", &e));          // truncated
}

TEST(CheckYamlTextTest, RejectsControlCharacters) {
  YamlError e;
  ASSERT_FALSE(CheckYamlText(std::string("a: \0", 4), &e));
  EXPECT_EQ(e.message, "control character 0x00 is not allowed in YAML");
  EXPECT_EQ(e.pos.column, 4);
}

}  // namespace
}  // namespace mkfleet::manifests
