//! Problems with Kubernetes objects, told once: each object whose problems
//! are new (or changed) is logged, counted, and gets a `Warning` Event
//! (reason `Rejected`, shown by `kubectl describe` and `kubectl events`);
//! an object found valid again is forgotten, so a later problem is told again.
//! Only the replica that leads publishes Events (every replica logs and
//! counts); each Event names the replica (`reportingInstance`).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use mesh_registry::problem::{Location, Problem};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The name Events are reported under (`reportingController`), and the
/// `controllerName` of the mesh's entries in route status.
pub const CONTROLLER: &str = "mesh.dev/control";
/// An Event's note is at most 1 kB.
const MAX_NOTE: usize = 1000;

/// An object: kind, namespace, name.
pub(super) type ObjectId = (String, String, String);

/// Tells problems once per object (see the module docs).
pub(super) struct ProblemReporter {
    recorder: Recorder,
    /// Whether Events are published (not by read-only users such as `meshctl policy explain`).
    publish: bool,
    counted: Arc<AtomicU64>,
    leading: tokio::sync::watch::Receiver<bool>,
    told: Mutex<BTreeMap<ObjectId, Told>>,
}

/// What was told of one object.
struct Told {
    messages: Vec<String>,
    /// Its UID, for an Event published later.
    uid: Option<String>,
    /// Whether its Event went out (a replica that did not lead when the
    /// problem was found publishes it once it leads).
    published: bool,
}

impl ProblemReporter {
    /// Publishes as `instance` (`reportingInstance`) while `leading` says so.
    pub(super) fn new(
        client: Client,
        counted: Arc<AtomicU64>,
        instance: &str,
        leading: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        // The recorder creates Events, and patches one that repeats.
        crate::rbac::EVENTS.check::<k8s_openapi::api::events::v1::Event>();
        let reporter = Reporter { controller: CONTROLLER.into(), instance: Some(instance.into()) };
        Self { recorder: Recorder::new(client, reporter), publish: true, counted, leading, told: Mutex::default() }
    }

    /// Stops publishing Events (problems are still logged and counted).
    pub(super) fn read_only(&mut self) {
        self.publish = false;
    }

    /// Reports `problems`; objects `in_scope` selects (those just checked)
    /// without problems are forgotten. `uid` finds an object's UID for its Event.
    pub(super) fn report(
        &self,
        in_scope: impl Fn(&ObjectId) -> bool,
        problems: Vec<Problem>,
        uid: impl Fn(&ObjectId) -> Option<String>,
    ) {
        let mut by_object: BTreeMap<ObjectId, Vec<String>> = BTreeMap::new();
        for problem in &problems {
            if let Location::Object { kind, namespace, name, field } = &problem.at {
                let text =
                    if field.is_empty() { problem.message.clone() } else { format!("{field}: {}", problem.message) };
                by_object.entry((kind.clone(), namespace.clone(), name.clone())).or_default().push(text);
            }
        }
        let mut told = self.told.lock().unwrap_or_else(PoisonError::into_inner);
        told.retain(|id, _| !in_scope(id) || by_object.contains_key(id));
        for (id, messages) in by_object {
            if let Some(known) = told.get_mut(&id).filter(|t| t.messages == messages) {
                if !known.published {
                    known.published = self.publish(&id, &known.messages, known.uid.clone());
                }
                continue;
            }
            self.counted.fetch_add(messages.len() as u64, Ordering::Relaxed);
            for m in &messages {
                tracing::warn!(kind = %id.0, namespace = %id.1, name = %id.2, problem = %m, "Kubernetes object rejected: not served");
            }
            let uid = uid(&id);
            let published = self.publish(&id, &messages, uid.clone());
            told.insert(id, Told { messages, uid, published });
        }
    }

    /// Publishes the Events of problems found while this replica did not
    /// lead; called when it starts leading (else they would never go out
    /// while the objects stay unchanged).
    pub(super) fn publish_pending(&self) {
        let mut told = self.told.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, t) in told.iter_mut().filter(|(_, t)| !t.published) {
            t.published = self.publish(id, &t.messages, t.uid.clone());
        }
    }

    /// Publishes the Event in the background (the watch never waits on it);
    /// whether it went out (false while another replica leads).
    fn publish(&self, id: &ObjectId, messages: &[String], uid: Option<String>) -> bool {
        if !self.publish {
            // Read-only: never publishes, so nothing is pending.
            return true;
        }
        if !*self.leading.borrow() {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        let mut note = messages.join("; ");
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE - 3;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "Rejected".into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some(api_version(&id.0).into()),
            kind: Some(id.0.clone()),
            namespace: Some(id.1.clone()),
            name: Some(id.2.clone()),
            uid,
            ..Default::default()
        };
        let recorder = self.recorder.clone();
        runtime.spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, kind = ?reference.kind, name = ?reference.name, "cannot publish a Kubernetes Event");
            }
        });
        true
    }
}

/// The API version of the kinds the registry reads.
fn api_version(kind: &str) -> &'static str {
    match kind {
        "Service" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "HTTPRoute" | "GRPCRoute" => "gateway.networking.k8s.io/v1",
        _ => "policy.mesh.dev/v1alpha1",
    }
}
