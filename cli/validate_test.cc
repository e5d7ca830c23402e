#include <sstream>
#include <string>

#include "cli/commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(ValidateTest, ExamplesAreValid) {
  std::ostringstream out, err;
  ValidateOptions options;
  options.paths = {"examples"};
  EXPECT_EQ(RunValidate(options, out, err), kExitOk);
  EXPECT_EQ(out.str(), "8 objects valid: 3 Host, 3 KernelInstance, 1 InstanceSet, 1 RolloutPolicy\n");
  EXPECT_EQ(err.str(), "");
}

TEST(ValidateTest, BrokenExampleReportsEveryErrorAndExits2) {
  std::ostringstream out, err;
  ValidateOptions options;
  options.paths = {"testdata/broken/broken.yaml"};
  EXPECT_EQ(RunValidate(options, out, err), kExitInvalid);
  EXPECT_EQ(out.str(), "");
  std::string text = err.str();
  EXPECT_THAT(text, StartsWith("testdata/broken/broken.yaml:5:9: KernelInstance/Web_1: "
                               "metadata.name: must be a DNS label"));
  EXPECT_THAT(text, HasSubstr("testdata/broken/broken.yaml:14:5: KernelInstance/Web_1: "
                              "spec.resources.memroy: unknown field \"memroy\" (did you mean "
                              "\"memory\"?)\n"));
  EXPECT_THAT(text, HasSubstr("testdata/broken/broken.yaml:31:38: Host/node-a: "
                              "spec.pool.hostReserved.memory: must be a multiple of 128Mi, got "
                              "100Mi\n"));
  EXPECT_THAT(text, HasSubstr("\n13 errors; nothing was changed\n"));
}

TEST(ValidateTest, CanonicalYamlOutput) {
  std::ostringstream out, err;
  ValidateOptions options;
  options.paths = {"examples/db.yaml", "examples/hosts.yaml"};
  options.output = "yaml";
  EXPECT_EQ(RunValidate(options, out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("name: db-1\n"));
  EXPECT_THAT(out.str(), HasSubstr("memory: 8Gi\n"));
  EXPECT_THAT(out.str(), HasSubstr("\n---\n"));
}

TEST(ValidateTest, MissingPathIsAnError) {
  std::ostringstream out, err;
  ValidateOptions options;
  options.paths = {"no/such/dir"};
  EXPECT_EQ(RunValidate(options, out, err), kExitInvalid);
  EXPECT_THAT(err.str(), StartsWith("no/such/dir:1:1: no such file or directory\n"));
}

}  // namespace
}  // namespace mkfleet::cli
