"""Protocol compatibility of zmesh's proto/ files, checked with code zmesh did not write.

1. Facts from upstream: every message, field (name, number, type, label), enum value, oneof, reserved number,
   service method and the two xDS type URLs, as written down below from Istio's and Envoy's own .proto files,
   must be what zmesh's .proto files declare, and zmesh must declare nothing else. The descriptors are made by
   grpc_tools' protoc (Debian python3-grpc-tools) from proto/, not by anything of zmesh's.
2. Python -> C: rich messages built with Google's protobuf runtime from stubs that grpc_tools generates from
   proto/ (a Workload and a Service with every field set, an Authorization with every Match field, a delta
   response whose Resources wrap Any(Address) and Any(Authorization), a CSR request, ZDS messages) are decoded
   by protoc-c's code (build/tests/pb_roundtrip, tests/e2e/pb_roundtrip.c); both sides print every present
   field in one format and the prints must be equal; protoc-c's re-encoding must parse back to an equal message.
3. C -> Python: messages built in C (a NACK, a delta response packed with pb_any_pack, a CSR request, a ZDS
   AddWorkload) parse in Python to the values the C code set, and the field numbers on the wire are read with
   a small tag walker here and named through the fact table, not through any generated code.

Where the facts come from (the commits they were read at):
  istio/ztunnel 62d826530e5c: proto/workload.proto, proto/authorization.proto, proto/citadel.proto,
                              proto/zds.proto
  istio/api b8f8791d9653: security/v1alpha1/ca.proto
  envoyproxy/data-plane-api 84e84367f256: envoy/service/discovery/v3/discovery.proto,
                                          envoy/config/core/v3/base.proto
  googleapis/googleapis f8291d2b89f0: google/rpc/status.proto
Envoy messages list only the fields zmesh declares (proto/README.md names the ones left out).
"""
import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")
TYPE_URL_PREFIX = "type.googleapis.com/"

# ---- facts from upstream -------------------------------------------------------------------------------------
# (field name, number, type); "repeated X" for a repeated field, "map<K, V>" for a map.
MESSAGES = {
    'envoy.config.core.v3.ControlPlane': [
        ('identifier', 1, 'string'),
    ],
    'envoy.config.core.v3.Locality': [
        ('region', 1, 'string'),
        ('zone', 2, 'string'),
        ('sub_zone', 3, 'string'),
    ],
    'envoy.config.core.v3.Node': [
        ('id', 1, 'string'),
        ('cluster', 2, 'string'),
        ('metadata', 3, 'google.protobuf.Struct'),
        ('locality', 4, 'envoy.config.core.v3.Locality'),
        ('user_agent_name', 6, 'string'),
        ('user_agent_version', 7, 'string'),
        ('client_features', 10, 'repeated string'),
    ],
    'envoy.service.discovery.v3.DeltaDiscoveryRequest': [
        ('node', 1, 'envoy.config.core.v3.Node'),
        ('type_url', 2, 'string'),
        ('resource_names_subscribe', 3, 'repeated string'),
        ('resource_names_unsubscribe', 4, 'repeated string'),
        ('initial_resource_versions', 5, 'map<string, string>'),
        ('response_nonce', 6, 'string'),
        ('error_detail', 7, 'google.rpc.Status'),
    ],
    'envoy.service.discovery.v3.DeltaDiscoveryResponse': [
        ('system_version_info', 1, 'string'),
        ('resources', 2, 'repeated envoy.service.discovery.v3.Resource'),
        ('type_url', 4, 'string'),
        ('removed_resources', 6, 'repeated string'),
        ('nonce', 5, 'string'),
        ('control_plane', 7, 'envoy.config.core.v3.ControlPlane'),
    ],
    'envoy.service.discovery.v3.Resource': [
        ('name', 3, 'string'),
        ('aliases', 4, 'repeated string'),
        ('version', 1, 'string'),
        ('resource', 2, 'google.protobuf.Any'),
        ('ttl', 6, 'google.protobuf.Duration'),
        ('cache_control', 7, 'envoy.service.discovery.v3.Resource.CacheControl'),
    ],
    'envoy.service.discovery.v3.Resource.CacheControl': [
        ('do_not_cache', 1, 'bool'),
    ],
    'google.rpc.Status': [
        ('code', 1, 'int32'),
        ('message', 2, 'string'),
        ('details', 3, 'repeated google.protobuf.Any'),
    ],
    'istio.security.Address': [
        ('address', 1, 'bytes'),
        ('length', 2, 'uint32'),
    ],
    'istio.security.Authorization': [
        ('name', 1, 'string'),
        ('namespace', 2, 'string'),
        ('scope', 3, 'istio.security.Scope'),
        ('action', 4, 'istio.security.Action'),
        ('rules', 5, 'repeated istio.security.Rule'),
        ('dry_run', 6, 'bool'),
        ('extensions', 7, 'repeated istio.workload.Extension'),
    ],
    'istio.security.Clause': [
        ('matches', 2, 'repeated istio.security.Match'),
    ],
    'istio.security.Match': [
        ('namespaces', 1, 'repeated istio.security.StringMatch'),
        ('not_namespaces', 2, 'repeated istio.security.StringMatch'),
        ('service_accounts', 11, 'repeated istio.security.ServiceAccountMatch'),
        ('not_service_accounts', 12, 'repeated istio.security.ServiceAccountMatch'),
        ('principals', 3, 'repeated istio.security.StringMatch'),
        ('not_principals', 4, 'repeated istio.security.StringMatch'),
        ('source_ips', 5, 'repeated istio.security.Address'),
        ('not_source_ips', 6, 'repeated istio.security.Address'),
        ('destination_ips', 7, 'repeated istio.security.Address'),
        ('not_destination_ips', 8, 'repeated istio.security.Address'),
        ('destination_ports', 9, 'repeated uint32'),
        ('not_destination_ports', 10, 'repeated uint32'),
        ('extensions', 13, 'repeated istio.workload.Extension'),
    ],
    'istio.security.Rule': [
        ('clauses', 1, 'repeated istio.security.Clause'),
    ],
    'istio.security.ServiceAccountMatch': [
        ('namespace', 1, 'string'),
        ('serviceAccount', 2, 'string'),
    ],
    'istio.security.StringMatch': [
        ('exact', 1, 'string'),
        ('prefix', 2, 'string'),
        ('suffix', 3, 'string'),
        ('presence', 4, 'google.protobuf.Empty'),
    ],
    'istio.v1.auth.IstioCertificateRequest': [
        ('csr', 1, 'string'),
        ('validity_duration', 3, 'int64'),
        ('metadata', 4, 'google.protobuf.Struct'),
    ],
    'istio.v1.auth.IstioCertificateResponse': [
        ('cert_chain', 1, 'repeated string'),
    ],
    'istio.workload.Address': [
        ('workload', 1, 'istio.workload.Workload'),
        ('service', 2, 'istio.workload.Service'),
    ],
    'istio.workload.ApplicationTunnel': [
        ('protocol', 1, 'istio.workload.ApplicationTunnel.Protocol'),
        ('port', 2, 'uint32'),
    ],
    'istio.workload.Extension': [
        ('name', 1, 'string'),
        ('config', 2, 'google.protobuf.Any'),
    ],
    'istio.workload.GatewayAddress': [
        ('hostname', 1, 'istio.workload.NamespacedHostname'),
        ('address', 2, 'istio.workload.NetworkAddress'),
        ('hbone_mtls_port', 3, 'uint32'),
    ],
    'istio.workload.LoadBalancing': [
        ('routing_preference', 1, 'repeated istio.workload.LoadBalancing.Scope'),
        ('mode', 2, 'istio.workload.LoadBalancing.Mode'),
        ('health_policy', 3, 'istio.workload.LoadBalancing.HealthPolicy'),
    ],
    'istio.workload.Locality': [
        ('region', 1, 'string'),
        ('zone', 2, 'string'),
        ('subzone', 3, 'string'),
    ],
    'istio.workload.NamespacedHostname': [
        ('namespace', 1, 'string'),
        ('hostname', 2, 'string'),
    ],
    'istio.workload.NetworkAddress': [
        ('network', 1, 'string'),
        ('address', 2, 'bytes'),
        ('length', 3, 'uint32'),
    ],
    'istio.workload.Port': [
        ('service_port', 1, 'uint32'),
        ('target_port', 2, 'uint32'),
        ('app_protocol', 3, 'istio.workload.AppProtocol'),
    ],
    'istio.workload.PortList': [
        ('ports', 1, 'repeated istio.workload.Port'),
    ],
    'istio.workload.Service': [
        ('name', 1, 'string'),
        ('namespace', 2, 'string'),
        ('hostname', 3, 'string'),
        ('addresses', 4, 'repeated istio.workload.NetworkAddress'),
        ('ports', 5, 'repeated istio.workload.Port'),
        ('subject_alt_names', 6, 'repeated string'),
        ('waypoint', 7, 'istio.workload.GatewayAddress'),
        ('load_balancing', 8, 'istio.workload.LoadBalancing'),
        ('ip_families', 9, 'istio.workload.IPFamilies'),
        ('extensions', 10, 'repeated istio.workload.Extension'),
        ('canonical', 11, 'bool'),
        ('ingress_use_waypoint', 12, 'bool'),
        ('weighted_waypoints', 13, 'repeated istio.workload.WeightedWaypoint'),
        ('visibility', 14, 'istio.workload.Service.Visibility'),
    ],
    'istio.workload.WeightedWaypoint': [
        ('destination', 1, 'istio.workload.GatewayAddress'),
        ('weight', 2, 'uint32'),
    ],
    'istio.workload.Workload': [
        ('uid', 20, 'string'),
        ('name', 1, 'string'),
        ('namespace', 2, 'string'),
        ('addresses', 3, 'repeated bytes'),
        ('hostname', 21, 'string'),
        ('network', 4, 'string'),
        ('tunnel_protocol', 5, 'istio.workload.TunnelProtocol'),
        ('trust_domain', 6, 'string'),
        ('service_account', 7, 'string'),
        ('waypoint', 8, 'istio.workload.GatewayAddress'),
        ('network_gateway', 19, 'istio.workload.GatewayAddress'),
        ('node', 9, 'string'),
        ('canonical_name', 10, 'string'),
        ('canonical_revision', 11, 'string'),
        ('workload_type', 12, 'istio.workload.WorkloadType'),
        ('workload_name', 13, 'string'),
        ('native_tunnel', 14, 'bool'),
        ('application_tunnel', 23, 'istio.workload.ApplicationTunnel'),
        ('services', 22, 'map<string, istio.workload.PortList>'),
        ('authorization_policies', 16, 'repeated string'),
        ('status', 17, 'istio.workload.WorkloadStatus'),
        ('cluster_id', 18, 'string'),
        ('locality', 24, 'istio.workload.Locality'),
        ('network_mode', 25, 'istio.workload.NetworkMode'),
        ('extensions', 26, 'repeated istio.workload.Extension'),
        ('capacity', 27, 'google.protobuf.UInt32Value'),
    ],
    'istio.workload.zds.Ack': [
        ('error', 1, 'string'),
    ],
    'istio.workload.zds.AddWorkload': [
        ('uid', 1, 'string'),
        ('workload_info', 2, 'istio.workload.zds.WorkloadInfo'),
    ],
    'istio.workload.zds.DelWorkload': [
        ('uid', 2, 'string'),
    ],
    'istio.workload.zds.KeepWorkload': [
        ('uid', 1, 'string'),
    ],
    'istio.workload.zds.SnapshotSent': [
    ],
    'istio.workload.zds.WorkloadInfo': [
        ('name', 1, 'string'),
        ('namespace', 2, 'string'),
        ('service_account', 3, 'string'),
    ],
    'istio.workload.zds.WorkloadRequest': [
        ('add', 1, 'istio.workload.zds.AddWorkload'),
        ('keep', 5, 'istio.workload.zds.KeepWorkload'),
        ('del', 2, 'istio.workload.zds.DelWorkload'),
        ('snapshot_sent', 3, 'istio.workload.zds.SnapshotSent'),
    ],
    'istio.workload.zds.WorkloadResponse': [
        ('ack', 1, 'istio.workload.zds.Ack'),
    ],
    'istio.workload.zds.ZdsHello': [
        ('version', 1, 'istio.workload.zds.Version'),
    ],
}
# zmesh's own types (no upstream; proto/README.md): written down from proto/zmesh/enrolment.proto, so that a
# field renumbered there, which would break node agents of another build, fails here too.
ZMESH_MESSAGES = {
    'zmesh.v1.PodEnrolment': [
        ('uid', 1, 'string'),
        ('name', 2, 'string'),
        ('namespace', 3, 'string'),
        ('service_account', 4, 'string'),
        ('node_name', 5, 'string'),
        ('ambient', 6, 'bool'),
        ('reason', 7, 'string'),
    ],
}
MESSAGES.update(ZMESH_MESSAGES)
ENUMS = {
    'istio.security.Action': [('ALLOW', 0), ('DENY', 1)],
    'istio.security.Scope': [('GLOBAL', 0), ('NAMESPACE', 1), ('WORKLOAD_SELECTOR', 2)],
    'istio.workload.AppProtocol': [('UNKNOWN', 0), ('HTTP11', 1), ('HTTP2', 2), ('GRPC', 3), ('TCP', 4), ('TLS', 5)],
    'istio.workload.ApplicationTunnel.Protocol': [('NONE', 0), ('PROXY', 1)],
    'istio.workload.IPFamilies': [('AUTOMATIC', 0), ('IPV4_ONLY', 1), ('IPV6_ONLY', 2), ('DUAL', 3)],
    'istio.workload.LoadBalancing.HealthPolicy': [('ONLY_HEALTHY', 0), ('ALLOW_ALL', 1)],
    'istio.workload.LoadBalancing.Mode': [('UNSPECIFIED_MODE', 0), ('STRICT', 1), ('FAILOVER', 2), ('PASSTHROUGH', 3)],
    'istio.workload.LoadBalancing.Scope': [('UNSPECIFIED_SCOPE', 0), ('REGION', 1), ('ZONE', 2), ('SUBZONE', 3), ('NODE', 4), ('CLUSTER', 5), ('NETWORK', 6)],
    'istio.workload.NetworkMode': [('STANDARD', 0), ('HOST_NETWORK', 1)],
    'istio.workload.Service.Visibility': [('PUBLIC', 0), ('NAMESPACE', 1)],
    'istio.workload.TunnelProtocol': [('NONE', 0), ('HBONE', 1), ('LEGACY_ISTIO_MTLS', 2)],
    'istio.workload.WorkloadStatus': [('HEALTHY', 0), ('UNHEALTHY', 1)],
    'istio.workload.WorkloadType': [('DEPLOYMENT', 0), ('CRONJOB', 1), ('POD', 2), ('JOB', 3)],
    'istio.workload.zds.Version': [('NOT_USED', 0), ('V1', 1)],
}
# Oneofs: name -> members. Upstream's NetworkAddress.length is proto3 `optional` (a synthetic oneof); zmesh
# declares it as a one-field oneof (same wire format), whose name is ours: OPTIONAL_AS_ONEOF.
ONEOFS = {
    "istio.workload.Address": {"type": ["workload", "service"]},
    "istio.workload.GatewayAddress": {"destination": ["hostname", "address"]},
    "istio.workload.NetworkAddress": {"length_present": ["length"]},
    "istio.security.StringMatch": {"match_type": ["exact", "prefix", "suffix", "presence"]},
    "istio.workload.zds.WorkloadRequest": {"payload": ["add", "keep", "del", "snapshot_sent"]},
    "istio.workload.zds.WorkloadResponse": {"payload": ["ack"]},
    "envoy.config.core.v3.Node": {"user_agent_version_type": ["user_agent_version"]},
}
OPTIONAL_AS_ONEOF = {("istio.workload.NetworkAddress", "length")}
# Numbers upstream reserves (removed fields); reusing one would misread an old peer's data.
RESERVED = {
    "istio.workload.Workload": [15],
    "istio.workload.GatewayAddress": [4],
    "istio.workload.zds.WorkloadInfo": [4],
    "envoy.config.core.v3.Node": [5],
}
# gRPC methods: full path -> (request type, response type, client streaming, server streaming).
METHODS = {
    "/istio.v1.auth.IstioCertificateService/CreateCertificate":
        ("istio.v1.auth.IstioCertificateRequest", "istio.v1.auth.IstioCertificateResponse", False, False),
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources":
        ("envoy.service.discovery.v3.DeltaDiscoveryRequest", "envoy.service.discovery.v3.DeltaDiscoveryResponse",
         True, True),
}
# The resource types ztunnel subscribes to (istio/ztunnel src/xds/types.rs).
TYPE_URLS = {
    "type.googleapis.com/istio.workload.Address": "istio.workload.Address",
    "type.googleapis.com/istio.security.Authorization": "istio.security.Authorization",
}
# zmesh's own L7 types (the waypoint's routes and policies), written down from proto/zmesh/l7.proto.
ZMESH_L7_MESSAGES = {
    'zmesh.v1.HTTPRoute': [
        ('kind', 1, 'zmesh.v1.HTTPRoute.Kind'),
        ('namespace', 2, 'string'),
        ('name', 3, 'string'),
        ('creation_timestamp', 4, 'int64'),
        ('parents', 5, 'repeated zmesh.v1.ParentRef'),
        ('hostnames', 6, 'repeated string'),
        ('rules', 7, 'repeated zmesh.v1.RouteRule'),
        ('tcp_rules', 8, 'repeated zmesh.v1.TcpRule'),
    ],
    'zmesh.v1.TcpRule': [
        ('ports', 1, 'repeated uint32'),
        ('backends', 2, 'repeated zmesh.v1.Backend'),
        ('tls', 3, 'bool'),
        ('service', 4, 'zmesh.v1.ParentRef'),
    ],
    'zmesh.v1.ParentRef': [
        ('namespace', 1, 'string'),
        ('name', 2, 'string'),
        ('port', 3, 'uint32'),
    ],
    'zmesh.v1.RouteRule': [
        ('name', 1, 'string'),
        ('matches', 2, 'repeated zmesh.v1.RouteMatch'),
        ('filters', 3, 'repeated zmesh.v1.RouteFilter'),
        ('backends', 4, 'repeated zmesh.v1.Backend'),
        ('timeouts', 5, 'zmesh.v1.Timeouts'),
        ('fault', 6, 'zmesh.v1.Fault'),
        ('retry', 7, 'zmesh.v1.Retry'),
        ('cors', 8, 'zmesh.v1.CorsPolicy'),
        ('direct_response', 9, 'zmesh.v1.DirectResponse'),
    ],
    'zmesh.v1.Fault': [
        ('delay_ms', 1, 'uint64'),
        ('delay_ppm', 2, 'uint32'),
        ('abort_http_status', 3, 'uint32'),
        ('abort_grpc', 4, 'bool'),
        ('abort_grpc_status', 5, 'uint32'),
        ('abort_ppm', 6, 'uint32'),
    ],
    'zmesh.v1.Retry': [
        ('attempts', 1, 'uint32'),
        ('per_try_timeout_ms', 2, 'uint64'),
        ('retry_on', 3, 'repeated string'),
        ('retry_on_codes', 4, 'repeated uint32'),
        ('retry_other_hosts', 5, 'bool'),
        ('backoff_base_ms', 6, 'uint64'),
    ],
    'zmesh.v1.CorsPolicy': [
        ('allow_origins', 1, 'repeated zmesh.v1.StringMatch'),
        ('allow_methods', 2, 'repeated string'),
        ('allow_headers', 3, 'repeated string'),
        ('expose_headers', 4, 'repeated string'),
        ('has_max_age', 5, 'bool'),
        ('max_age_s', 6, 'int64'),
        ('allow_credentials', 7, 'zmesh.v1.CorsPolicy.Tristate'),
        ('unmatched_preflight_ignore', 8, 'bool'),
    ],
    'zmesh.v1.DirectResponse': [
        ('status', 1, 'uint32'),
        ('body', 2, 'bytes'),
    ],
    'zmesh.v1.StringMatch': [
        ('type', 1, 'zmesh.v1.StringMatch.Type'),
        ('value', 2, 'string'),
    ],
    'zmesh.v1.NamedMatch': [
        ('type', 1, 'zmesh.v1.StringMatch.Type'),
        ('name', 2, 'string'),
        ('value', 3, 'string'),
    ],
    'zmesh.v1.RouteMatch': [
        ('path', 1, 'zmesh.v1.StringMatch'),
        ('headers', 2, 'repeated zmesh.v1.NamedMatch'),
        ('query_params', 3, 'repeated zmesh.v1.NamedMatch'),
        ('method', 4, 'string'),
        ('grpc_type', 5, 'zmesh.v1.StringMatch.Type'),
        ('grpc_service', 6, 'string'),
        ('grpc_method', 7, 'string'),
        ('ignore_uri_case', 8, 'bool'),
        ('without_headers', 9, 'repeated zmesh.v1.NamedMatch'),
        ('port', 10, 'uint32'),
        ('authority', 11, 'zmesh.v1.StringMatch'),
        ('scheme', 12, 'zmesh.v1.StringMatch'),
        ('source_namespace', 13, 'string'),
        ('has_source_labels', 14, 'bool'),
        ('source_workloads', 15, 'repeated string'),
    ],
    'zmesh.v1.HeaderValue': [
        ('name', 1, 'string'),
        ('value', 2, 'string'),
    ],
    'zmesh.v1.HeaderModifier': [
        ('set', 1, 'repeated zmesh.v1.HeaderValue'),
        ('add', 2, 'repeated zmesh.v1.HeaderValue'),
        ('remove', 3, 'repeated string'),
    ],
    'zmesh.v1.PathModifier': [
        ('type', 1, 'zmesh.v1.PathModifier.Type'),
        ('value', 2, 'string'),
        ('pattern', 3, 'string'),
    ],
    'zmesh.v1.RequestRedirect': [
        ('scheme', 1, 'string'),
        ('hostname', 2, 'string'),
        ('path', 3, 'zmesh.v1.PathModifier'),
        ('port', 4, 'uint32'),
        ('status_code', 5, 'uint32'),
    ],
    'zmesh.v1.URLRewrite': [
        ('hostname', 1, 'string'),
        ('path', 2, 'zmesh.v1.PathModifier'),
    ],
    'zmesh.v1.RequestMirror': [
        ('backend', 1, 'zmesh.v1.BackendRef'),
        ('numerator', 2, 'uint32'),
        ('denominator', 3, 'uint32'),
    ],
    'zmesh.v1.RouteFilter': [
        ('request_header_modifier', 1, 'zmesh.v1.HeaderModifier'),
        ('response_header_modifier', 2, 'zmesh.v1.HeaderModifier'),
        ('request_redirect', 3, 'zmesh.v1.RequestRedirect'),
        ('url_rewrite', 4, 'zmesh.v1.URLRewrite'),
        ('request_mirror', 5, 'zmesh.v1.RequestMirror'),
    ],
    'zmesh.v1.BackendRef': [
        ('namespace', 1, 'string'),
        ('name', 2, 'string'),
        ('port', 3, 'uint32'),
    ],
    'zmesh.v1.Backend': [
        ('service', 1, 'zmesh.v1.BackendRef'),
        ('weight', 2, 'uint32'),
        ('filters', 3, 'repeated zmesh.v1.RouteFilter'),
        ('subset', 4, 'string'),
        ('authority', 5, 'string'),
    ],
    'zmesh.v1.Timeouts': [
        ('request_ms', 1, 'uint64'),
        ('backend_request_ms', 2, 'uint64'),
    ],
    'zmesh.v1.L7Authorization': [
        ('namespace', 1, 'string'),
        ('name', 2, 'string'),
        ('targets', 3, 'repeated zmesh.v1.PolicyTarget'),
        ('action', 4, 'zmesh.v1.L7Authorization.Action'),
        ('dry_run', 5, 'bool'),
        ('rules', 6, 'repeated zmesh.v1.L7Rule'),
    ],
    'zmesh.v1.PolicyTarget': [
        ('kind', 1, 'zmesh.v1.PolicyTarget.Kind'),
        ('namespace', 2, 'string'),
        ('name', 3, 'string'),
    ],
    'zmesh.v1.Source': [
        ('principals', 1, 'repeated string'),
        ('not_principals', 2, 'repeated string'),
        ('request_principals', 3, 'repeated string'),
        ('not_request_principals', 4, 'repeated string'),
        ('namespaces', 5, 'repeated string'),
        ('not_namespaces', 6, 'repeated string'),
        ('ip_blocks', 7, 'repeated string'),
        ('not_ip_blocks', 8, 'repeated string'),
        ('remote_ip_blocks', 9, 'repeated string'),
        ('not_remote_ip_blocks', 10, 'repeated string'),
        ('service_accounts', 11, 'repeated string'),
        ('not_service_accounts', 12, 'repeated string'),
    ],
    'zmesh.v1.Operation': [
        ('hosts', 1, 'repeated string'),
        ('not_hosts', 2, 'repeated string'),
        ('ports', 3, 'repeated string'),
        ('not_ports', 4, 'repeated string'),
        ('methods', 5, 'repeated string'),
        ('not_methods', 6, 'repeated string'),
        ('paths', 7, 'repeated string'),
        ('not_paths', 8, 'repeated string'),
    ],
    'zmesh.v1.Condition': [
        ('key', 1, 'string'),
        ('values', 2, 'repeated string'),
        ('not_values', 3, 'repeated string'),
    ],
    'zmesh.v1.L7Rule': [
        ('from', 1, 'repeated zmesh.v1.Source'),
        ('to', 2, 'repeated zmesh.v1.Operation'),
        ('when', 3, 'repeated zmesh.v1.Condition'),
    ],
}
MESSAGES.update(ZMESH_L7_MESSAGES)
ZMESH_L7_ENUMS = {
    'zmesh.v1.HTTPRoute.Kind': [('HTTP', 0), ('GRPC', 1), ('VIRTUAL_SERVICE', 2)],
    'zmesh.v1.StringMatch.Type': [('EXACT', 0), ('PREFIX', 1), ('REGEX', 2), ('STRING_PREFIX', 3), ('PRESENT', 4)],
    'zmesh.v1.PathModifier.Type': [('NONE', 0), ('FULL', 1), ('PREFIX_MATCH', 2), ('PREFIX_REWRITE', 3), ('REGEX', 4)],
    'zmesh.v1.CorsPolicy.Tristate': [('UNSET', 0), ('FALSE', 1), ('TRUE', 2)],
    'zmesh.v1.L7Authorization.Action': [('ALLOW', 0), ('DENY', 1), ('AUDIT', 2)],
    'zmesh.v1.PolicyTarget.Kind': [('GATEWAY', 0), ('SERVICE', 1)],
}
ZMESH_L7_ONEOFS = {
    'zmesh.v1.RouteFilter': {'kind': ['request_header_modifier', 'response_header_modifier', 'request_redirect', 'url_rewrite', 'request_mirror']},
}
ENUMS.update(ZMESH_L7_ENUMS)
ONEOFS.update(ZMESH_L7_ONEOFS)
# zmesh's DestinationRule (the waypoint's load balancing), written down from proto/zmesh/destination_rule.proto.
ZMESH_DR_MESSAGES = {
    'zmesh.v1.DestinationRule': [
        ('namespace', 1, 'string'),
        ('name', 2, 'string'),
        ('host', 3, 'string'),
        ('service_namespace', 4, 'string'),
        ('service_name', 5, 'string'),
        ('creation_timestamp', 6, 'int64'),
        ('traffic_policy', 7, 'zmesh.v1.TrafficPolicy'),
        ('subsets', 8, 'repeated zmesh.v1.Subset'),
    ],
    'zmesh.v1.Label': [
        ('key', 1, 'string'),
        ('value', 2, 'string'),
    ],
    'zmesh.v1.Subset': [
        ('name', 1, 'string'),
        ('labels', 2, 'repeated zmesh.v1.Label'),
        ('traffic_policy', 3, 'zmesh.v1.TrafficPolicy'),
        ('endpoints', 4, 'repeated string'),
    ],
    'zmesh.v1.TrafficPolicy': [
        ('load_balancer', 1, 'zmesh.v1.LoadBalancer'),
        ('connection_pool', 2, 'zmesh.v1.ConnectionPool'),
        ('outlier_detection', 3, 'zmesh.v1.OutlierDetection'),
        ('port_level_settings', 4, 'repeated zmesh.v1.PortTrafficPolicy'),
    ],
    'zmesh.v1.PortTrafficPolicy': [
        ('port', 1, 'uint32'),
        ('load_balancer', 2, 'zmesh.v1.LoadBalancer'),
        ('connection_pool', 3, 'zmesh.v1.ConnectionPool'),
        ('outlier_detection', 4, 'zmesh.v1.OutlierDetection'),
    ],
    'zmesh.v1.LoadBalancer': [
        ('simple', 1, 'zmesh.v1.LoadBalancer.Simple'),
        ('consistent_hash', 2, 'zmesh.v1.ConsistentHash'),
    ],
    'zmesh.v1.ConsistentHash': [
        ('http_header_name', 1, 'string'),
        ('http_cookie', 2, 'zmesh.v1.HTTPCookie'),
        ('use_source_ip', 3, 'bool'),
        ('http_query_parameter_name', 4, 'string'),
        ('algorithm', 5, 'zmesh.v1.ConsistentHash.Algorithm'),
        ('minimum_ring_size', 6, 'uint64'),
        ('table_size', 7, 'uint64'),
    ],
    'zmesh.v1.HTTPCookie': [
        ('name', 1, 'string'),
        ('path', 2, 'string'),
        ('has_ttl', 3, 'bool'),
        ('ttl_ms', 4, 'uint64'),
    ],
    'zmesh.v1.ConnectionPool': [
        ('max_connections', 1, 'uint32'),
        ('connect_timeout_ms', 2, 'uint64'),
        ('http1_max_pending_requests', 3, 'uint32'),
        ('http2_max_requests', 4, 'uint32'),
        ('max_requests_per_connection', 5, 'uint32'),
        ('max_retries', 6, 'uint32'),
        ('idle_timeout_ms', 7, 'uint64'),
    ],
    'zmesh.v1.OutlierDetection': [
        ('consecutive_5xx_errors', 1, 'uint32'),
        ('consecutive_gateway_errors', 2, 'uint32'),
        ('interval_ms', 3, 'uint64'),
        ('base_ejection_time_ms', 4, 'uint64'),
        ('max_ejection_percent', 5, 'uint32'),
        ('min_health_percent', 6, 'uint32'),
        ('has_consecutive_5xx', 7, 'bool'),
    ],
}
MESSAGES.update(ZMESH_DR_MESSAGES)
ENUMS.update({
    'zmesh.v1.LoadBalancer.Simple': [('UNSPECIFIED', 0), ('LEAST_REQUEST', 1), ('ROUND_ROBIN', 2), ('RANDOM', 3), ('PASSTHROUGH', 4)],
    'zmesh.v1.ConsistentHash.Algorithm': [('RING_HASH', 0), ('MAGLEV', 1)],
})
ONEOFS.update({
    'zmesh.v1.ConsistentHash': {'key': ['http_header_name', 'http_cookie', 'use_source_ip', 'http_query_parameter_name']},
})
# zmesh's RequestAuthentication (the waypoint's JWT check), written down from
# proto/zmesh/request_authentication.proto.
MESSAGES.update({
    'zmesh.v1.RequestAuthentication': [
        ('namespace', 1, 'string'),
        ('name', 2, 'string'),
        ('targets', 3, 'repeated zmesh.v1.PolicyTarget'),
        ('jwt_rules', 4, 'repeated zmesh.v1.JWTRule'),
    ],
    'zmesh.v1.JWTHeader': [
        ('name', 1, 'string'),
        ('prefix', 2, 'string'),
    ],
    'zmesh.v1.ClaimToHeader': [
        ('header', 1, 'string'),
        ('claim', 2, 'string'),
    ],
    'zmesh.v1.JWTRule': [
        ('issuer', 1, 'string'),
        ('audiences', 2, 'repeated string'),
        ('jwks', 3, 'string'),
        ('jwks_uri', 4, 'string'),
        ('from_headers', 5, 'repeated zmesh.v1.JWTHeader'),
        ('from_params', 6, 'repeated string'),
        ('from_cookies', 7, 'repeated string'),
        ('forward_original_token', 8, 'bool'),
        ('output_payload_to_header', 9, 'string'),
        ('output_claim_to_headers', 10, 'repeated zmesh.v1.ClaimToHeader'),
    ],
})
# Packages of the well-known types, which come from the protobuf installation, not from proto/.
WKT_PACKAGE = "google.protobuf"

# Types pb_roundtrip can be asked to decode, and whose Any payloads it decodes in place (its types[] list).
C_TYPES = {
    "istio.workload.Address", "istio.workload.Workload", "istio.workload.Service", "istio.security.Authorization",
    "istio.v1.auth.IstioCertificateRequest", "istio.v1.auth.IstioCertificateResponse",
    "envoy.service.discovery.v3.DeltaDiscoveryRequest", "envoy.service.discovery.v3.DeltaDiscoveryResponse",
    "istio.workload.zds.WorkloadRequest", "istio.workload.zds.WorkloadResponse", "istio.workload.zds.ZdsHello",
    "google.protobuf.ListValue",
}
# Nesting below the top-level message that Google's parsers accept (and src/xds/pb.h's PB_MAX_DEPTH).
MAX_DEPTH = 100


def proto_files():
    """zmesh's .proto files, relative to proto/ (the import root)."""
    out = []
    for root, _, files in os.walk(PROTO_DIR):
        for f in files:
            if f.endswith(".proto"):
                out.append(os.path.relpath(os.path.join(root, f), PROTO_DIR))
    return sorted(out)


class Stubs:
    """The generated Python modules and the descriptor set, from grpc_tools' protoc over proto/."""

    def __init__(self, outdir):
        import importlib

        import grpc_tools  # Debian python3-grpc-tools; scripts/deps.sh installs it
        from google.protobuf import descriptor_pb2

        wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        desc = os.path.join(outdir, "zmesh.desc")
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR, "-I" + wkt,
               "--python_out=" + outdir, "--grpc_python_out=" + outdir,
               "--include_imports", "--descriptor_set_out=" + desc] + proto_files()
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, "grpc_tools.protoc failed:\n" + r.stderr
        sys.path.insert(0, outdir)
        self.wl = importlib.import_module("workload_pb2")
        self.authz = importlib.import_module("authorization_pb2")
        self.ca = importlib.import_module("citadel_pb2")
        self.zds = importlib.import_module("zds_pb2")
        self.disc = importlib.import_module("envoy.service.discovery.v3.discovery_pb2")
        self.core = importlib.import_module("envoy.config.core.v3.base_pb2")
        self.status = importlib.import_module("google.rpc.status_pb2")
        self.fds = descriptor_pb2.FileDescriptorSet()
        with open(desc, "rb") as f:
            self.fds.ParseFromString(f.read())


@pytest.fixture(scope="module")
def pb():
    with tempfile.TemporaryDirectory(prefix="zmesh-pbstubs-") as d:
        yield Stubs(d)


@pytest.fixture(scope="module")
def roundtrip():
    """Path of build/tests/pb_roundtrip (beside $ZMESH_BIN); the test fails, not skips, without it."""
    bindir = os.environ.get("ZMESH_BIN") or os.path.join(REPO, "build", "bin")
    path = os.path.join(os.path.dirname(os.path.abspath(bindir)), "tests", "pb_roundtrip")
    assert os.access(path, os.X_OK), "no %s: run make all" % path
    return path


# ---- descriptors against the facts ---------------------------------------------------------------------------

def zmesh_declarations(fds):
    """(messages, enums, oneofs, reserved, methods) declared by proto/, in the fact tables' shapes."""
    from google.protobuf import descriptor_pb2
    T = descriptor_pb2.FieldDescriptorProto
    messages, enums, oneofs, reserved, methods = {}, {}, {}, {}, {}

    def type_of(f, maps):
        if f.type_name:
            t = f.type_name.lstrip(".")
            if t in maps:
                return maps[t]
        else:
            t = T.Type.Name(f.type)[len("TYPE_"):].lower()
        return ("repeated " if f.label == T.LABEL_REPEATED else "") + t

    def walk(prefix, m):
        name = prefix + "." + m.name
        maps = {}
        for n in m.nested_type:
            if n.options.map_entry:
                k, v = n.field
                maps[name + "." + n.name] = "map<%s, %s>" % (type_of(k, {}), type_of(v, {}))
        messages[name] = {f.name: (f.number, type_of(f, maps)) for f in m.field}
        oo = {}
        for f in m.field:
            assert not f.proto3_optional, "%s.%s: proto3 optional (python3-grpc-tools 1.14 rejects it)" % (name, f.name)
            if f.HasField("oneof_index"):
                oo.setdefault(m.oneof_decl[f.oneof_index].name, []).append(f.name)
        if oo:
            oneofs[name] = oo
        if m.reserved_range:
            reserved[name] = sorted(n for r in m.reserved_range for n in range(r.start, r.end))
        for e in m.enum_type:
            enums[name + "." + e.name] = [(v.name, v.number) for v in e.value]
        for n in m.nested_type:
            if not n.options.map_entry:
                walk(name, n)

    for fd in fds.file:
        if fd.package == WKT_PACKAGE:
            continue
        for m in fd.message_type:
            walk(fd.package, m)
        for e in fd.enum_type:
            enums[fd.package + "." + e.name] = [(v.name, v.number) for v in e.value]
        for s in fd.service:
            for m in s.method:
                methods["/%s.%s/%s" % (fd.package, s.name, m.name)] = (
                    m.input_type.lstrip("."), m.output_type.lstrip("."), m.client_streaming, m.server_streaming)
    return messages, enums, oneofs, reserved, methods


def test_fields_match_upstream(pb):
    messages, _, _, _, _ = zmesh_declarations(pb.fds)
    problems = []
    for msg, facts in MESSAGES.items():
        if msg not in messages:
            problems.append("%s: not declared" % msg)
            continue
        got = messages[msg]
        for name, number, typ in facts:
            if name not in got:
                problems.append("%s.%s: not declared (upstream %d %s)" % (msg, name, number, typ))
            elif got[name] != (number, typ):
                problems.append("%s.%s: zmesh %d %s, upstream %d %s" % ((msg, name) + got[name] + (number, typ)))
        extra = set(got) - {f[0] for f in facts}
        if extra:
            problems.append("%s: fields not in the upstream table: %s" % (msg, sorted(extra)))
    extra = set(messages) - set(MESSAGES)
    if extra:
        problems.append("messages not in the upstream table: %s" % sorted(extra))
    assert not problems, "\n".join(problems)
    # The table itself is what the tests below lean on: spot-check numbers that are easy to get wrong.
    wl = dict((f[0], f[1]) for f in MESSAGES["istio.workload.Workload"])
    assert (wl["uid"], wl["hostname"], wl["services"], wl["capacity"]) == (20, 21, 22, 27)
    assert dict((f[0], f[1]) for f in MESSAGES["envoy.service.discovery.v3.Resource"])["name"] == 3


def test_enums_oneofs_reserved_match_upstream(pb):
    _, enums, oneofs, reserved, _ = zmesh_declarations(pb.fds)
    assert enums == ENUMS
    assert oneofs == ONEOFS
    assert reserved == RESERVED
    # The oneof that stands in for upstream's proto3 optional must keep presence: a length of 0 that was set
    # is not the same as no length.
    for msg, field in OPTIONAL_AS_ONEOF:
        (members,) = [m for m in ONEOFS[msg].values() if field in m]
        assert members == [field]
    a = pb.wl.NetworkAddress(length=0)
    assert a.HasField("length") and a.SerializeToString() == b"\x18\x00"
    assert not pb.wl.NetworkAddress().HasField("length")


def test_methods_and_type_urls(pb):
    _, _, _, _, methods = zmesh_declarations(pb.fds)
    assert methods == METHODS
    from google.protobuf import any_pb2
    for url, name in TYPE_URLS.items():
        cls = pb.wl.Address if name.startswith("istio.workload") else pb.authz.Authorization
        assert cls.DESCRIPTOR.full_name == name
        a = any_pb2.Any()
        a.Pack(cls())
        assert a.type_url == url


# ---- one print format on both sides (see the header of tests/e2e/pb_roundtrip.c) ----------------------------

def quote(b, is_bytes):
    out = ['b"' if is_bytes else '"']
    for c in b:
        out.append(chr(c) if 0x20 <= c < 0x7f and c not in b'"\\' else "\\x%02x" % c)
    out.append('"')
    return "".join(out)


def map_key(k):
    out = []
    for c in k.encode("utf-8"):
        out.append(chr(c) if 0x20 <= c < 0x7f and c not in b'"\\{}' else "\\x%02x" % c)
    return "".join(out)


def py_dump(msg, path="", out=None):
    from google.protobuf import descriptor
    FD = descriptor.FieldDescriptor
    out = [] if out is None else out
    full = msg.DESCRIPTOR.full_name
    if full == "google.protobuf.Any" and msg.type_url.startswith(TYPE_URL_PREFIX) \
            and msg.type_url[len(TYPE_URL_PREFIX):] in C_TYPES:
        name = msg.type_url[len(TYPE_URL_PREFIX):]
        out.append("%s = <%s>" % (path, full))
        out.append("%s.type_url = %s" % (path, quote(msg.type_url.encode(), False)))
        inner = find_class(name)()
        assert msg.Unpack(inner)
        return py_dump(inner, "%s.value<%s>" % (path, name), out)
    out.append("%s = <%s>" % (path, full))

    def value(fd, v, p):
        if fd.type == FD.TYPE_MESSAGE:
            py_dump(v, p, out)
        elif fd.type == FD.TYPE_STRING:
            out.append("%s = %s" % (p, quote(v.encode("utf-8"), False)))
        elif fd.type == FD.TYPE_BYTES:
            out.append("%s = %s" % (p, quote(v, True)))
        elif fd.type == FD.TYPE_BOOL:
            out.append("%s = %s" % (p, "true" if v else "false"))
        elif fd.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            out.append("%s = %.17g" % (p, v))
        else:
            out.append("%s = %d" % (p, v))

    for fd, v in msg.ListFields():
        sub = path + ("." if path else "") + fd.name
        if fd.label == FD.LABEL_REPEATED:
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                vfd = fd.message_type.fields_by_name["value"]
                for k in v:
                    value(vfd, v[k], "%s{%s}" % (sub, map_key(k)))
            else:
                for i, e in enumerate(v):
                    value(fd, e, "%s[%d]" % (sub, i))
        else:
            value(fd, v, sub)
    return out


_CLASSES = {}


def find_class(full_name):
    return _CLASSES[full_name]


def register_classes(pb):
    for mod in (pb.wl, pb.authz, pb.ca, pb.zds, pb.disc):
        for m in mod.DESCRIPTOR.message_types_by_name.values():
            _CLASSES[m.full_name] = getattr(mod, m.name)


def c_dump(roundtrip, msg, tmpdir):
    path = os.path.join(tmpdir, "in.bin")
    with open(path, "wb") as f:
        f.write(msg.SerializeToString())
    r = subprocess.run([roundtrip, "dump", msg.DESCRIPTOR.full_name, path], capture_output=True, text=True)
    assert r.returncode == 0, "pb_roundtrip dump failed: " + r.stderr
    return r.stdout.splitlines()


def c_reencode(roundtrip, msg, tmpdir):
    src, dst = os.path.join(tmpdir, "in.bin"), os.path.join(tmpdir, "out.bin")
    with open(src, "wb") as f:
        f.write(msg.SerializeToString())
    r = subprocess.run([roundtrip, "reencode", msg.DESCRIPTOR.full_name, src, dst], capture_output=True, text=True)
    assert r.returncode == 0, "pb_roundtrip reencode failed: " + r.stderr
    with open(dst, "rb") as f:
        return type(msg).FromString(f.read())


def c_build(roundtrip, name, cls, tmpdir):
    path = os.path.join(tmpdir, name + ".bin")
    r = subprocess.run([roundtrip, "build", name, path], capture_output=True, text=True)
    assert r.returncode == 0, "pb_roundtrip build %s failed: %s" % (name, r.stderr)
    with open(path, "rb") as f:
        data = f.read()
    return data, cls.FromString(data)


# ---- rich messages -------------------------------------------------------------------------------------------

IPV4 = bytes([10, 0, 1, 2])
IPV6 = bytes.fromhex("fd000000000000000000000000000102")


def assert_every_field_set(msg):
    """The builders below claim to set every field; this holds them to it."""
    unset = set(msg.DESCRIPTOR.fields_by_name) - {fd.name for fd, _ in msg.ListFields()}
    assert not unset, "%s: fields left unset: %s" % (msg.DESCRIPTOR.full_name, sorted(unset))


def string_value_any(text):
    from google.protobuf import any_pb2, wrappers_pb2
    a = any_pb2.Any()
    a.Pack(wrappers_pb2.StringValue(value=text))
    return a


def full_workload(pb):
    from google.protobuf import wrappers_pb2
    wl = pb.wl
    w = wl.Workload(
        uid="Kubernetes//v1/Pod/default/a-1", name="a-1", namespace="default", addresses=[IPV4, IPV6],
        hostname="a-1.example.com", network="net1", tunnel_protocol=wl.HBONE, trust_domain="td.local",
        service_account="sa-a",
        waypoint=wl.GatewayAddress(address=wl.NetworkAddress(network="net1", address=bytes([10, 0, 9, 9])),
                                   hbone_mtls_port=15008),
        network_gateway=wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace="istio-system",
                                                                          hostname="eastwest.example.com"),
                                          hbone_mtls_port=15009),
        node="node-1", canonical_name="app-\u00fcnicode", canonical_revision="v2",
        workload_type=wl.POD, workload_name="a", native_tunnel=True,
        application_tunnel=wl.ApplicationTunnel(protocol=wl.ApplicationTunnel.PROXY, port=8081),
        authorization_policies=["default/p1", "default/p2"], status=wl.UNHEALTHY, cluster_id="cluster-9",
        locality=wl.Locality(region="r1", zone="z1", subzone="s1"), network_mode=wl.HOST_NETWORK,
        extensions=[wl.Extension(name="ext-1", config=string_value_any("opaque"))],
        capacity=wrappers_pb2.UInt32Value(value=5))
    w.services["default/svc.default.svc.cluster.local"].ports.extend([
        wl.Port(service_port=80, target_port=8080, app_protocol=wl.HTTP11),
        wl.Port(service_port=443, target_port=8443, app_protocol=wl.TLS)])
    w.services["other/{odd} \"key\"\\"].ports.add(service_port=9000)
    assert_every_field_set(w)
    return w


def full_service(pb):
    wl = pb.wl
    wp = wl.GatewayAddress(hostname=wl.NamespacedHostname(namespace="default", hostname="waypoint.default.svc"),
                           hbone_mtls_port=15008)
    s = wl.Service(
        name="svc", namespace="default", hostname="svc.default.svc.cluster.local",
        addresses=[wl.NetworkAddress(network="", address=bytes([10, 96, 0, 10])),
                   wl.NetworkAddress(network="net2", address=IPV6, length=0),
                   wl.NetworkAddress(network="net3", address=bytes([192, 168, 0, 0]), length=24)],
        ports=[wl.Port(service_port=80, target_port=8080, app_protocol=wl.HTTP2),
               wl.Port(service_port=9090, app_protocol=wl.GRPC)],
        subject_alt_names=["spiffe://td.local/ns/default/sa/svc"], waypoint=wp,
        load_balancing=wl.LoadBalancing(routing_preference=[wl.LoadBalancing.NETWORK, wl.LoadBalancing.REGION,
                                                            wl.LoadBalancing.ZONE],
                                        mode=wl.LoadBalancing.FAILOVER,
                                        health_policy=wl.LoadBalancing.ALLOW_ALL),
        ip_families=wl.DUAL, extensions=[wl.Extension(name="svc-ext")], canonical=True,
        ingress_use_waypoint=True,
        weighted_waypoints=[wl.WeightedWaypoint(destination=wp, weight=90),
                            wl.WeightedWaypoint(destination=wl.GatewayAddress(
                                address=wl.NetworkAddress(address=bytes([10, 0, 9, 8])), hbone_mtls_port=15008),
                                weight=10)],
        visibility=wl.Service.NAMESPACE)
    assert_every_field_set(s)
    return s


def full_authorization(pb):
    from google.protobuf import empty_pb2
    az = pb.authz
    m = az.Match(
        namespaces=[az.StringMatch(exact="default"), az.StringMatch(prefix="team-")],
        not_namespaces=[az.StringMatch(suffix="-system"), az.StringMatch(exact="")],
        service_accounts=[az.ServiceAccountMatch(namespace="default", serviceAccount="sa-a")],
        not_service_accounts=[az.ServiceAccountMatch(namespace="kube-system", serviceAccount="default")],
        principals=[az.StringMatch(presence=empty_pb2.Empty())],
        not_principals=[az.StringMatch(exact="spiffe://td.local/ns/bad/sa/bad")],
        source_ips=[az.Address(address=bytes([10, 0, 0, 0]), length=8)],
        not_source_ips=[az.Address(address=IPV6, length=128)],
        destination_ips=[az.Address(address=IPV4, length=32)],
        not_destination_ips=[az.Address(address=bytes([10, 0, 2, 0]), length=24)],
        destination_ports=[80, 65535], not_destination_ports=[22],
        extensions=[pb.wl.Extension(name="m-ext", config=string_value_any("x"))])
    assert_every_field_set(m)
    a = az.Authorization(
        name="deny-bad", namespace="default", scope=az.WORKLOAD_SELECTOR, action=az.DENY,
        rules=[az.Rule(clauses=[az.Clause(matches=[m]),
                                az.Clause(matches=[az.Match(destination_ports=[8080])])]),
               az.Rule(clauses=[az.Clause(matches=[az.Match(principals=[az.StringMatch(exact="p")])])])],
        dry_run=True, extensions=[pb.wl.Extension(name="a-ext")])
    assert_every_field_set(a)
    return a


def any_of(msg):
    from google.protobuf import any_pb2
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def delta_response(pb):
    from google.protobuf import duration_pb2
    d = pb.disc
    r = d.DeltaDiscoveryResponse(
        system_version_info="2026-12-01T00:00:00Z/7",
        resources=[
            d.Resource(name="Kubernetes//v1/Pod/default/a-1", aliases=["net1/10.0.1.2"], version="1",
                       resource=any_of(pb.wl.Address(workload=full_workload(pb))),
                       ttl=duration_pb2.Duration(seconds=5, nanos=1),
                       cache_control=d.Resource.CacheControl(do_not_cache=True)),
            d.Resource(name="default/svc.default.svc.cluster.local", version="2",
                       resource=any_of(pb.wl.Address(service=full_service(pb)))),
            d.Resource(name="default/deny-bad", version="3", resource=any_of(full_authorization(pb))),
        ],
        type_url="type.googleapis.com/istio.workload.Address", removed_resources=["default/gone", "x/y"],
        nonce="nonce-1", control_plane=pb.core.ControlPlane(identifier="zmeshd-0"))
    assert_every_field_set(r)
    assert_every_field_set(r.resources[0])
    return r


def delta_request(pb):
    from google.protobuf import struct_pb2
    d = pb.disc
    meta = struct_pb2.Struct()
    meta.update({"NAME": "ztunnel-x", "INSTANCE_IPS": ["10.0.1.2", "fd00::1"], "LABELS": {"app": "ztunnel"},
                 "EXTRA": True, "WEIGHT": 0.1, "NOTHING": None})
    r = d.DeltaDiscoveryRequest(
        node=pb.core.Node(id="ztunnel~10.0.1.2~ztunnel-x.istio-system~istio-system.svc.cluster.local",
                          cluster="Kubernetes", metadata=meta,
                          locality=pb.core.Locality(region="r", zone="z", sub_zone="sz"),
                          user_agent_name="ztunnel", user_agent_version="1.0",
                          client_features=["envoy.lb.does_not_support_overprovisioning"]),
        type_url="type.googleapis.com/istio.security.Authorization",
        resource_names_subscribe=["*"], resource_names_unsubscribe=["default/old"],
        response_nonce="nonce-1",
        error_detail=pb.status.Status(code=3, message="default/a: bad; default/b: worse",
                                      details=[string_value_any("detail")]))
    r.initial_resource_versions["default/p1"] = "v1"
    r.initial_resource_versions["default/p2"] = ""
    assert_every_field_set(r)
    assert_every_field_set(r.node)
    return r


def ca_request(pb):
    from google.protobuf import struct_pb2
    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": "spiffe://cluster.local/ns/default/sa/b"})
    r = pb.ca.IstioCertificateRequest(csr="-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
                                      validity_duration=-1, metadata=meta)
    assert_every_field_set(r)
    return r


def ca_response(pb):
    return pb.ca.IstioCertificateResponse(cert_chain=["leaf-pem\n", "intermediate-pem\n", "root-a\nroot-b\n"])


CASES = {
    "workload": lambda pb: pb.wl.Address(workload=full_workload(pb)),
    "service": lambda pb: pb.wl.Address(service=full_service(pb)),
    "authorization": full_authorization,
    "delta_response": delta_response,
    "delta_request": delta_request,
    "ca_request": ca_request,
    "ca_response": ca_response,
    "zds_add": lambda pb: pb.zds.WorkloadRequest(add=pb.zds.AddWorkload(
        uid="uid-1", workload_info=pb.zds.WorkloadInfo(name="a", namespace="default", service_account="sa"))),
    "zds_keep": lambda pb: pb.zds.WorkloadRequest(keep=pb.zds.KeepWorkload(uid="uid-2")),
    "zds_del": lambda pb: pb.zds.WorkloadRequest(**{"del": pb.zds.DelWorkload(uid="uid-3")}),
    "zds_snapshot_sent": lambda pb: pb.zds.WorkloadRequest(snapshot_sent=pb.zds.SnapshotSent()),
    "zds_ack": lambda pb: pb.zds.WorkloadResponse(ack=pb.zds.Ack(error="")),
    "zds_nack": lambda pb: pb.zds.WorkloadResponse(ack=pb.zds.Ack(error="no netns")),
    "zds_hello": lambda pb: pb.zds.ZdsHello(version=pb.zds.V1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_python_to_c(pb, roundtrip, case, tmp_path):
    register_classes(pb)
    msg = CASES[case](pb)
    want = sorted(py_dump(msg))
    got = sorted(c_dump(roundtrip, msg, str(tmp_path)))
    if got != want:
        import difflib
        pytest.fail("protoc-c decodes differently (- Python, + C):\n" +
                    "\n".join(difflib.unified_diff(want, got, lineterm="", n=0)))
    # Every value set above was printed: a field dropped on one side cannot hide behind an empty print.
    assert len(want) > 1
    back = c_reencode(roundtrip, msg, str(tmp_path))
    assert back == msg


# ---- wire-level reading, independent of any generated code ---------------------------------------------------

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


def varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def wire_fields(data):
    """[(field number, wire type, value)] at the top level of one encoded message; value is bytes for LEN."""
    out, i = [], 0
    while i < len(data):
        tag, i = varint(data, i)
        num, wt = tag >> 3, tag & 7
        if wt == WIRE_VARINT:
            v, i = varint(data, i)
        elif wt == WIRE_LEN:
            n, i = varint(data, i)
            v, i = data[i:i + n], i + n
        elif wt == WIRE_I64:
            v, i = data[i:i + 8], i + 8
        elif wt == WIRE_I32:
            v, i = data[i:i + 4], i + 4
        else:
            raise AssertionError("wire type %d at offset %d" % (wt, i))
        out.append((num, wt, v))
    assert i == len(data)
    return out


def names_on_wire(data, message):
    """The upstream names (from the fact table) of the fields present in data, a message of type message."""
    by_number = {number: name for name, number, _ in MESSAGES[message]}
    names = []
    for num, _, _ in wire_fields(data):
        assert num in by_number, "%s: field number %d on the wire is not upstream's" % (message, num)
        names.append(by_number[num])
    return names


def sub(data, number):
    """The bytes of the first length-delimited field number in data."""
    return next(v for n, wt, v in wire_fields(data) if n == number and wt == WIRE_LEN)


def encode_varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def nested_list_values(levels):
    """levels nested messages, ListValue at the top, then Value, ListValue ... (values = 1, list_value = 6)."""
    data = b""
    for lvl in range(levels - 1, 0, -1):
        field = 1 if lvl % 2 else 6
        data = encode_varint(field << 3 | WIRE_LEN) + encode_varint(len(data)) + data
    return data


def c_accepts(roundtrip, type_name, data, tmpdir):
    path = os.path.join(tmpdir, "raw.bin")
    with open(path, "wb") as f:
        f.write(data)
    r = subprocess.run([roundtrip, "dump", type_name, path], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def py_accepts(cls, data):
    from google.protobuf import message
    try:
        cls.FromString(data)
        return True
    except message.DecodeError:
        return False


def test_hostile_input_refused_as_google_does(pb, roundtrip, tmp_path):
    """zmesh's decoder (pb_message_unpack) refuses what Google's parser refuses, at the same bounds."""
    from google.protobuf import struct_pb2
    for levels, ok in ((1 + MAX_DEPTH, True), (2 + MAX_DEPTH, False), (100000, False)):
        data = nested_list_values(levels)
        assert py_accepts(struct_pb2.ListValue, data) == ok, levels
        assert c_accepts(roundtrip, "google.protobuf.ListValue", data, str(tmp_path)) == ok, levels
    for what, data in (("field 0", b"\x02\x00"), ("field 0, two-byte tag", b"\x82\x00\x00"),
                       ("truncated", b"\x0a\x05a"), ("wire type 7", b"\x0f\x00")):
        assert not py_accepts(pb.wl.Address, data), what
        assert not c_accepts(roundtrip, "istio.workload.Address", data, str(tmp_path)), what
    # The one known difference: Google's parser skips an unknown proto2 group; protobuf-c has no groups and
    # refuses the message (none of these protocols has a group, so no real peer sends one).
    group = b"\x0b\x0c"
    assert py_accepts(pb.wl.Address, group)
    assert not c_accepts(roundtrip, "istio.workload.Address", group, str(tmp_path))


def test_c_nack(pb, roundtrip, tmp_path):
    data, r = c_build(roundtrip, "nack", pb.disc.DeltaDiscoveryRequest, str(tmp_path))
    assert set(names_on_wire(data, "envoy.service.discovery.v3.DeltaDiscoveryRequest")) == {
        "node", "type_url", "resource_names_subscribe", "resource_names_unsubscribe",
        "initial_resource_versions", "response_nonce", "error_detail"}
    assert set(names_on_wire(sub(data, 1), "envoy.config.core.v3.Node")) == {"id", "cluster", "metadata"}
    assert set(names_on_wire(sub(data, 7), "google.rpc.Status")) == {"code", "message"}
    assert r.node.id == "ztunnel~10.0.1.2~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
    assert r.node.cluster == "Kubernetes"
    md = r.node.metadata
    assert md["NAME"] == "ztunnel-abc" and list(md["INSTANCE_IPS"]) == ["10.0.1.2"] and md["WEIGHT"] == 2.5
    assert r.type_url == "type.googleapis.com/istio.workload.Address"
    assert list(r.resource_names_subscribe) == ["*"] and list(r.resource_names_unsubscribe) == ["default/gone"]
    assert dict(r.initial_resource_versions) == {"Kubernetes//Pod/default/a": "7"}
    assert r.response_nonce == "nonce-42"
    assert (r.error_detail.code, r.error_detail.message) == (3, "default/bad: unknown tunnel protocol")


def test_c_delta_response(pb, roundtrip, tmp_path):
    data, r = c_build(roundtrip, "delta_response", pb.disc.DeltaDiscoveryResponse, str(tmp_path))
    assert set(names_on_wire(data, "envoy.service.discovery.v3.DeltaDiscoveryResponse")) == {
        "system_version_info", "resources", "type_url", "removed_resources", "nonce"}
    res0 = sub(data, 2)
    assert set(names_on_wire(res0, "envoy.service.discovery.v3.Resource")) == {"name", "version", "resource", "ttl"}
    # Inside the Any (field 2 of Resource) the payload is an Address whose field 1 is the Workload; the
    # Workload's uid must be on the wire as field 20.
    payload = [v for n, _, v in wire_fields(sub(res0, 2)) if n == 2][0]
    wl_bytes = sub(payload, 1)
    assert set(names_on_wire(wl_bytes, "istio.workload.Workload")) == {
        "uid", "name", "namespace", "addresses", "tunnel_protocol", "status", "capacity"}
    assert (20, WIRE_LEN, b"Kubernetes//Pod/default/b") in wire_fields(wl_bytes)

    assert r.system_version_info == "2026-12-01T00:00:00Z/1" and r.nonce == "n-1"
    assert r.type_url == "type.googleapis.com/istio.workload.Address"
    assert list(r.removed_resources) == ["default/old"]
    assert [x.name for x in r.resources] == ["Kubernetes//Pod/default/b", "default/deny-ns"]
    assert [x.version for x in r.resources] == ["v1", "v2"]
    assert (r.resources[0].ttl.seconds, r.resources[0].ttl.nanos) == (30, 500000000)
    a0, a1 = r.resources[0].resource, r.resources[1].resource
    assert a0.type_url == "type.googleapis.com/istio.workload.Address"
    assert a1.type_url == "type.googleapis.com/istio.security.Authorization"
    addr = pb.wl.Address()
    assert a0.Unpack(addr) and addr.WhichOneof("type") == "workload"
    w = addr.workload
    assert (w.uid, w.name, w.namespace) == ("Kubernetes//Pod/default/b", "b", "default")
    assert list(w.addresses) == [bytes([10, 0, 2, 3])]
    assert w.tunnel_protocol == pb.wl.HBONE and w.status == pb.wl.UNHEALTHY
    assert w.HasField("capacity") and w.capacity.value == 3
    pol = pb.authz.Authorization()
    assert a1.Unpack(pol)
    assert (pol.name, pol.namespace, pol.scope, pol.action) == ("deny-ns", "default", pb.authz.NAMESPACE, pb.authz.DENY)
    m = pol.rules[0].clauses[0].matches[0]
    assert m.principals[0].WhichOneof("match_type") == "prefix"
    assert m.principals[0].prefix == "spiffe://cluster.local/ns/"
    assert list(m.destination_ports) == [8080, 9090]


def test_c_csr(pb, roundtrip, tmp_path):
    data, r = c_build(roundtrip, "csr", pb.ca.IstioCertificateRequest, str(tmp_path))
    assert set(names_on_wire(data, "istio.v1.auth.IstioCertificateRequest")) == {"csr", "validity_duration", "metadata"}
    assert (3, WIRE_VARINT, 86400) in wire_fields(data)
    assert r.csr.startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    assert r.validity_duration == 86400
    assert dict(r.metadata) == {"ImpersonatedIdentity": "spiffe://cluster.local/ns/default/sa/b"}


def test_c_zds_add(pb, roundtrip, tmp_path):
    data, r = c_build(roundtrip, "zds_add", pb.zds.WorkloadRequest, str(tmp_path))
    assert names_on_wire(data, "istio.workload.zds.WorkloadRequest") == ["add"]
    add = sub(data, 1)
    assert set(names_on_wire(add, "istio.workload.zds.AddWorkload")) == {"uid", "workload_info"}
    assert set(names_on_wire(sub(add, 2), "istio.workload.zds.WorkloadInfo")) == {"name", "namespace",
                                                                                   "service_account"}
    assert r.WhichOneof("payload") == "add"
    assert r.add.uid == "0ae5c03d-5fb3-4eb9-9de8-2bd4b51606ba"
    i = r.add.workload_info
    assert (i.name, i.namespace, i.service_account) == ("b", "default", "sa-b")


def test_c_encoded_resources(pb, roundtrip, tmp_path):
    """Resources encoded from model structs by src/xds/resource.c (what zmeshd serves) parse in Google's
    runtime to the values set, with the fields istiod writes and nothing else."""
    _, r = c_build(roundtrip, "encoded_addresses", pb.disc.DeltaDiscoveryResponse, str(tmp_path))
    assert r.type_url == "type.googleapis.com/istio.workload.Address"
    assert [x.name for x in r.resources] == ["Kubernetes//v1/Pod/default/web-1",
                                             "default/web.default.svc.cluster.local"]
    assert list(r.removed_resources) == ["Kubernetes//v1/Pod/default/gone"]
    addr = pb.wl.Address()
    assert r.resources[0].resource.Unpack(addr) and addr.WhichOneof("type") == "workload"
    w = addr.workload
    # Every field of the model; native_tunnel and extensions are not in it, so never written.
    assert {fd.name for fd, _ in w.ListFields()} == set(w.DESCRIPTOR.fields_by_name) - {"native_tunnel",
                                                                                         "extensions"}
    assert (w.uid, w.name, w.namespace, w.hostname) == ("Kubernetes//v1/Pod/default/web-1", "web-1", "default",
                                                        "web-1.example")
    assert list(w.addresses) == [bytes([10, 0, 3, 4]), bytes.fromhex("fd000000000000000000000000000004")]
    assert (w.network, w.trust_domain, w.service_account, w.node) == ("net1", "cluster.local", "web", "node-1")
    assert w.tunnel_protocol == pb.wl.HBONE and w.status == pb.wl.UNHEALTHY and w.workload_type == pb.wl.POD
    assert (w.canonical_name, w.canonical_revision, w.workload_name, w.cluster_id) == ("web", "v1", "web",
                                                                                       "Kubernetes")
    assert w.waypoint.WhichOneof("destination") == "hostname"
    assert (w.waypoint.hostname.namespace, w.waypoint.hostname.hostname, w.waypoint.hbone_mtls_port) == (
        "default", "waypoint.default.svc.cluster.local", 15008)
    assert w.network_gateway.WhichOneof("destination") == "address"
    assert (w.network_gateway.address.network, w.network_gateway.address.address) == ("net2", bytes([192, 0, 2, 1]))
    assert not w.network_gateway.address.HasField("length")
    assert (w.application_tunnel.protocol, w.application_tunnel.port) == (1, 15088)
    assert {k: [(p.service_port, p.target_port) for p in v.ports] for k, v in w.services.items()} == {
        "default/web.default.svc.cluster.local": [(80, 8080), (443, 8443)]}
    assert list(w.authorization_policies) == ["default/allow-web"]
    assert (w.locality.region, w.locality.zone, w.locality.subzone) == ("r1", "z1", "s1")
    assert w.network_mode == pb.wl.HOST_NETWORK and w.capacity.value == 3

    assert r.resources[1].resource.Unpack(addr) and addr.WhichOneof("type") == "service"
    s = addr.service
    assert {fd.name for fd, _ in s.ListFields()} == {"name", "namespace", "hostname", "addresses", "ports",
                                                     "subject_alt_names", "waypoint", "load_balancing",
                                                     "ip_families"}
    assert (s.name, s.namespace, s.hostname) == ("web", "default", "web.default.svc.cluster.local")
    assert [(a.network, a.address, a.HasField("length")) for a in s.addresses] == [("net1", bytes([10, 96, 0, 9]),
                                                                                     False)]
    assert [(p.service_port, p.target_port, p.app_protocol) for p in s.ports] == [(80, 8080, 0), (443, 8443, 0)]
    assert list(s.subject_alt_names) == ["spiffe://cluster.local/ns/default/sa/web"]
    assert s.waypoint.address.address == bytes([10, 0, 9, 9]) and s.waypoint.hbone_mtls_port == 15008
    lb = s.load_balancing
    assert list(lb.routing_preference) == [pb.wl.LoadBalancing.NETWORK, pb.wl.LoadBalancing.ZONE]
    assert lb.mode == pb.wl.LoadBalancing.FAILOVER and lb.health_policy == pb.wl.LoadBalancing.ALLOW_ALL
    assert s.ip_families == pb.wl.DUAL

    _, r = c_build(roundtrip, "encoded_authorization", pb.disc.DeltaDiscoveryResponse, str(tmp_path))
    assert r.type_url == "type.googleapis.com/istio.security.Authorization"
    assert [x.name for x in r.resources] == ["default/allow-web"]
    pol = pb.authz.Authorization()
    assert r.resources[0].resource.Unpack(pol)
    assert (pol.name, pol.namespace, pol.scope, pol.action, pol.dry_run) == (
        "allow-web", "default", pb.authz.WORKLOAD_SELECTOR, pb.authz.ALLOW, True)
    m = pol.rules[0].clauses[0].matches[0]
    assert {fd.name for fd, _ in m.ListFields()} == set(m.DESCRIPTOR.fields_by_name) - {"extensions"}
    assert [(x.WhichOneof("match_type"), x.exact) for x in m.namespaces] == [("exact", "default")]
    assert m.not_namespaces[0].prefix == "kube-" and m.principals[0].suffix == "/sa/web"
    assert m.not_principals[0].WhichOneof("match_type") == "presence"
    assert [(x.namespace, x.serviceAccount) for x in m.service_accounts] == [("default", "web")]
    assert [(x.namespace, x.serviceAccount) for x in m.not_service_accounts] == [("default", "db")]
    # istiod writes every policy address with its length, the full one for a single IP.
    assert [(a.address, a.length) for a in m.source_ips] == [(bytes([10, 0, 0, 0]), 8)]
    assert [(a.address, a.length) for a in m.not_source_ips] == [(bytes.fromhex("fd000000000000000000000000000001"),
                                                                  128)]
    assert [(a.address, a.length) for a in m.destination_ips] == [(bytes([10, 0, 3, 4]), 32)]
    assert [(a.address, a.length) for a in m.not_destination_ips] == [(bytes([10, 0, 3, 0]), 24)]
    assert list(m.destination_ports) == [8080] and list(m.not_destination_ports) == [9090]
