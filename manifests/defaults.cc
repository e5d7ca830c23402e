#include "manifests/defaults.h"

namespace mkfleet::manifests {

namespace v1 = mkfleet::v1;

namespace {

constexpr uint64_t kMinute = 60'000;  // ms

// Each as the field's comment in manifest.proto says, and as the controller reads it.
void FillRollout(v1::Rollout* r) {
  if (r->max_unavailable().value_case() == v1::IntOrPercent::VALUE_NOT_SET) r->mutable_max_unavailable()->set_count(1);
  if (r->max_surge().value_case() == v1::IntOrPercent::VALUE_NOT_SET) r->mutable_max_surge()->set_count(1);
  if (r->max_failures().value_case() == v1::IntOrPercent::VALUE_NOT_SET) r->mutable_max_failures()->set_count(1);
  if (r->health_timeout() == 0) r->set_health_timeout(kMinute);
  if (!r->has_auto_rollback()) r->set_auto_rollback(true);
}

void FillInstanceSpec(v1::KernelInstanceSpec* spec) {
  v1::UpdateSpec* update = spec->mutable_update();  // strategy: Replace (zero)
  if (update->strategy() == v1::UPDATE_MORPH && update->morph().timeout() == 0) {
    update->mutable_morph()->set_timeout(kMinute);
  }
}

}  // namespace

void FillDefaults(v1::Object* object) {
  switch (object->kind_case()) {
    case v1::Object::kKernelInstance:
      FillInstanceSpec(object->mutable_kernel_instance()->mutable_spec());
      break;
    case v1::Object::kInstanceSet: {
      v1::InstanceSetSpec* spec = object->mutable_instance_set()->mutable_spec();
      FillInstanceSpec(spec->mutable_template_()->mutable_spec());
      FillRollout(spec->mutable_rollout());
      if (!spec->has_revision_history_limit()) spec->set_revision_history_limit(10);
      break;
    }
    case v1::Object::kRolloutPolicy: {
      v1::RolloutPolicySpec* spec = object->mutable_rollout_policy()->mutable_spec();
      FillRollout(spec->mutable_rollout());
      if (!spec->has_revision_history_limit()) spec->set_revision_history_limit(10);
      break;
    }
    case v1::Object::kGitSource: {
      v1::GitSourceSpec* spec = object->mutable_git_source()->mutable_spec();
      const v1::GitRef& ref = spec->ref();
      if (ref.branch().empty() && ref.tag().empty() && ref.commit().empty()) spec->mutable_ref()->set_branch("main");
      if (spec->interval() == 0) spec->set_interval(kMinute);
      if (!spec->credentials().token_file().empty() && spec->credentials().username().empty()) {
        spec->mutable_credentials()->set_username("git");
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace mkfleet::manifests
