//! Argo fields that are valid Argo but have no effect in spillway.
//!
//! Two lists, checked by the decoder for keys a struct does not have:
//! - [`is_k8s_only`]: fields that only mean something on Kubernetes (pods,
//!   service accounts, replicas). Accepted with one warning each, so an Argo
//!   config runs unchanged.
//! - [`not_supported`]: Argo features spillway does not implement (yet). An
//!   error that says so, rather than "unknown field", because the user did
//!   not misspell anything.

/// Kubernetes-only fields per config struct (serde struct name).
const K8S_ONLY: &[(&str, &[&str])] = &[
    (
        "ObjectMeta",
        &[
            // Selectors and tooling read these on Kubernetes; nothing here does.
            "labels",
            "annotations",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ],
    ),
    ("EventBus", &["status"]),
    // Only mean something for `operation: update|patch` of a live object.
    ("K8sTrigger", &["patchStrategy", "liveObject"]),
    ("EventSource", &["status"]),
    ("Sensor", &["status"]),
    ("WorkflowTemplate", &["status"]),
    (
        "JetStreamBus",
        &[
            "version",
            "replicas",
            "containerTemplate",
            "reloaderContainerTemplate",
            "metricsContainerTemplate",
            "persistence",
            "metadata",
            "nodeSelector",
            "tolerations",
            "securityContext",
            "imagePullSecrets",
            "priorityClassName",
            "priority",
            "affinity",
            "serviceAccountName",
            "startArgs",
            "tls",
        ],
    ),
    (
        "EventSourceSpec",
        &["template", "service", "replicas", "eventBusName"],
    ),
    (
        "SensorSpec",
        &[
            "template",
            "replicas",
            "eventBusName",
            "revisionHistoryLimit",
        ],
    ),
    (
        "WorkflowSpec",
        &[
            "serviceAccountName",
            "podGC",
            "ttlStrategy",
            "nodeSelector",
            "tolerations",
            "affinity",
            "securityContext",
            "imagePullSecrets",
            "volumes",
            "volumeClaimTemplates",
            "podMetadata",
            "priorityClassName",
            "podPriorityClassName",
            "workflowMetadata",
            "archiveLogs",
            "artifactRepositoryRef",
        ],
    ),
    (
        "Template",
        &[
            "metadata",
            "nodeSelector",
            "tolerations",
            "affinity",
            "securityContext",
            "serviceAccountName",
            "podSpecPatch",
            "priorityClassName",
            "volumes",
            "sidecars",
            "initContainers",
        ],
    ),
    (
        "Container",
        &[
            "resources",
            "imagePullPolicy",
            "volumeMounts",
            "securityContext",
            "ports",
            "livenessProbe",
            "readinessProbe",
            "envFrom",
        ],
    ),
    (
        "Script",
        &[
            "resources",
            "imagePullPolicy",
            "volumeMounts",
            "securityContext",
            "envFrom",
        ],
    ),
];

/// Argo features not implemented by spillway, with the reason shown to users.
const NOT_SUPPORTED: &[(&str, &str, &str)] = &[
    (
        "EventBusSpec",
        "nats",
        "the NATS Streaming (STAN) bus is deprecated in Argo; use `jetstream`",
    ),
    (
        "EventBusSpec",
        "kafka",
        "a Kafka event bus is not supported; use `jetstream` (embedded or a NATS server)",
    ),
    (
        "EventBusSpec",
        "jetstreamExotic",
        "use `jetstream.url` to point at an existing JetStream server",
    ),
    (
        "TriggerPolicy",
        "k8s",
        "k8s resource policies watch Kubernetes objects; use `status.allow` for http triggers",
    ),
    (
        "HttpTrigger",
        "secureHeaders",
        "secureHeaders read Kubernetes secrets; use `headers`",
    ),
    (
        "HttpTrigger",
        "basicAuth",
        "basicAuth reads Kubernetes secrets; use `headers` with an Authorization value",
    ),
    (
        "HttpTrigger",
        "tls",
        "client TLS settings are not supported yet",
    ),
    (
        "ArtifactLocation",
        "git",
        "git sources need network access to a repository; check the file out and use `file` (or an inline `resource`)",
    ),
    (
        "ArtifactLocation",
        "s3",
        "S3 sources are not supported; use an inline `resource`",
    ),
    (
        "ArtifactLocation",
        "inline",
        "use `resource` with the object as YAML",
    ),
    (
        "Template",
        "steps",
        "only `container` and `script` templates run on the local executor",
    ),
    (
        "Template",
        "dag",
        "only `container` and `script` templates run on the local executor",
    ),
    (
        "Template",
        "resource",
        "only `container` and `script` templates run on the local executor",
    ),
    (
        "Template",
        "suspend",
        "only `container` and `script` templates run on the local executor",
    ),
    (
        "Template",
        "http",
        "only `container` and `script` templates run on the local executor",
    ),
    ("Synchronization", "mutex", "only semaphores are supported"),
    (
        "Synchronization",
        "mutexes",
        "only semaphores are supported",
    ),
    ("Synchronization", "semaphores", "use `semaphore`"),
    (
        "AmqpEvent",
        "tls",
        "TLS to RabbitMQ is not supported by this build; use amqp://",
    ),
    (
        "AmqpEvent",
        "auth",
        "auth reads Kubernetes secrets; put user:password in the url",
    ),
    (
        "AmqpEvent",
        "urlSecret",
        "urlSecret reads a Kubernetes secret; use `url`",
    ),
    (
        "AmqpEvent",
        "filter",
        "event source filters are not supported; filter in the Sensor dependency",
    ),
    (
        "NatsEvent",
        "tls",
        "TLS to NATS is not supported by this build",
    ),
    (
        "NatsEvent",
        "auth",
        "auth reads Kubernetes secrets; put user:password in the url",
    ),
    (
        "NatsEvent",
        "filter",
        "event source filters are not supported; filter in the Sensor dependency",
    ),
    (
        "CalendarEvent",
        "persistence",
        "catch-up persistence lives in a Kubernetes ConfigMap; spillway counts missed ticks instead",
    ),
    (
        "CalendarEvent",
        "filter",
        "event source filters are not supported; filter in the Sensor dependency",
    ),
    (
        "CalendarEvent",
        "userPayload",
        "userPayload is deprecated in Argo; use `metadata`",
    ),
];

/// Whether `field` of `struct_name` is accepted only for Kubernetes' sake.
pub fn is_k8s_only(struct_name: &str, field: &str) -> bool {
    K8S_ONLY
        .iter()
        .any(|(s, fields)| *s == struct_name && fields.contains(&field))
}

/// Why a valid Argo `field` of `struct_name` is not supported, if it is one.
pub fn not_supported(struct_name: &str, field: &str) -> Option<&'static str> {
    NOT_SUPPORTED
        .iter()
        .find(|(s, f, _)| *s == struct_name && *f == field)
        .map(|(_, _, why)| *why)
}
