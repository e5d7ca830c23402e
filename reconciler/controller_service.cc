#include "reconciler/controller_service.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

grpc::Status UnknownKind(const std::string& kind) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("kind: unknown kind \"", kind, "\" (Host, KernelInstance or InstanceSet)"));
}

}  // namespace

bool IsKnownKind(const std::string& kind) {
  return kind == "Host" || kind == "KernelInstance" || kind == "InstanceSet";
}

grpc::Status ControllerService::DoApply(const v1::ApplyRequest& request, bool dry_run, v1::ApplyResponse* response) {
  std::vector<v1::Object> objects(request.objects().begin(), request.objects().end());
  ApplyOptions options;
  options.source = request.source();
  options.dry_run = dry_run;
  options.prune = request.prune();
  auto result = objects_.Apply(objects, options);
  if (!result.ok()) return ToGrpc(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Apply(grpc::ServerContext*, const v1::ApplyRequest* request,
                                      v1::ApplyResponse* response) {
  return DoApply(*request, request->dry_run(), response);
}

grpc::Status ControllerService::Diff(grpc::ServerContext*, const v1::ApplyRequest* request,
                                     v1::ApplyResponse* response) {
  return DoApply(*request, /*dry_run=*/true, response);
}

grpc::Status ControllerService::Get(grpc::ServerContext*, const v1::GetRequest* request, v1::GetResponse* response) {
  if (!IsKnownKind(request->kind())) return UnknownKind(request->kind());
  if (request->name().empty()) {
    auto list = objects_.List(request->kind());
    if (!list.ok()) return ToGrpc(list.status());
    for (auto& o : *list) *response->add_objects() = std::move(o);
    return grpc::Status::OK;
  }
  auto one = objects_.Get(request->kind(), request->name());
  if (!one.ok()) return ToGrpc(one.status());
  if (!one->has_value()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat(request->kind(), "/", request->name(), " does not exist"));
  }
  *response->add_objects() = **one;
  return grpc::Status::OK;
}

grpc::Status ControllerService::Delete(grpc::ServerContext*, const v1::DeleteRequest* request, v1::DeleteResponse*) {
  if (!IsKnownKind(request->kind())) return UnknownKind(request->kind());
  return ToGrpc(objects_.Delete(request->kind(), request->name()));
}

std::unique_ptr<grpc::Server> StartControllerServer(ControllerService& service, const std::string& address,
                                                    int* port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server != nullptr) server->GetHealthCheckService()->SetServingStatus("mkfleet.v1.Controller", true);
  return server;
}

}  // namespace mkfleet::reconciler
