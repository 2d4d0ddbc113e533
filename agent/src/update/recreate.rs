//! How the new container is configured: the old container's configuration, exactly, on the new
//! image — except for what only came from the old image's defaults.
//!
//! Works on the engine's JSON (inspect in, create body out) so fields this build does not know
//! about still carry over. Rules:
//! - `Config` carries over, with `Image` replaced. Env entries, labels, cmd, entrypoint,
//!   healthcheck, working dir, user, stop signal, shell, exposed ports and volumes that equal the
//!   OLD IMAGE's values are dropped, so the new image's defaults apply (a user-set value that
//!   happens to equal the old default is indistinguishable from it and is dropped too). A cmd
//!   is kept whenever the entrypoint is kept (Docker discards the image's cmd when a container
//!   sets its own entrypoint). A hostname equal to the old id's short form (Docker's default) is
//!   dropped so the new container gets its own.
//! - `HostConfig` carries over whole (binds, mounts, ports, restart policy, resources, log
//!   config, network mode, ...). Anonymous volumes of the old container (image `VOLUME`s and
//!   `-v /path`) are mounted into the new one by name, so their data is not left behind.
//! - Networks: the network of `HostConfig.NetworkMode` is configured at create (aliases minus the
//!   old short id, static IPAM addresses, links, driver options); every other network is
//!   connected with the same settings after create and before start.

use serde_json::{Map, Value};

/// What to create and which further networks to connect before starting.
#[derive(Clone, Debug, PartialEq)]
pub struct CreatePlan {
    pub body: Value,
    pub extra_networks: Vec<(String, Value)>,
}

/// Config keys whose value is dropped when it equals the old image's.
const IMAGE_DEFAULT_KEYS: [&str; 6] = [
    "Healthcheck",
    "WorkingDir",
    "User",
    "StopSignal",
    "Shell",
    "OnBuild",
];

/// Builds the new container's create body from the old container's inspect document and its
/// image's inspect document (None when the old image is gone: then nothing is treated as an
/// image default).
pub fn plan(old: &Value, old_image: Option<&Value>, new_image: &str) -> CreatePlan {
    let empty = Map::new();
    let config = old
        .get("Config")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let image_config = old_image
        .and_then(|i| i.get("Config"))
        .and_then(Value::as_object);
    let mut body = config.clone();
    body.insert("Image".into(), Value::String(new_image.to_string()));
    body.remove("ArgsEscaped");

    if let Some(img) = image_config {
        // Env: drop entries set by the old image.
        if let Some(Value::Array(env)) = body.get_mut("Env") {
            let defaults = str_set(img.get("Env"));
            env.retain(|e| !e.as_str().is_some_and(|e| defaults.contains(&e)));
        }
        // Labels: drop key/value pairs set by the old image.
        if let (Some(Value::Object(labels)), Some(Value::Object(img_labels))) =
            (body.get_mut("Labels"), img.get("Labels"))
        {
            labels.retain(|k, v| img_labels.get(k) != Some(v));
        }
        // Entrypoint and cmd.
        let entrypoint_is_default = same(config.get("Entrypoint"), img.get("Entrypoint"));
        if entrypoint_is_default {
            body.remove("Entrypoint");
            if same(config.get("Cmd"), img.get("Cmd")) {
                body.remove("Cmd");
            }
        }
        for key in IMAGE_DEFAULT_KEYS {
            if same(config.get(key), img.get(key)) {
                body.remove(key);
            }
        }
        // Ports with host bindings stay exposed whatever the images say: the engine publishes
        // only exposed ports, and a binding must not silently stop working.
        let published: Vec<String> = old
            .pointer("/HostConfig/PortBindings")
            .and_then(Value::as_object)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default();
        for key in ["ExposedPorts", "Volumes"] {
            if let (Some(Value::Object(mine)), Some(Value::Object(theirs))) =
                (body.get_mut(key), img.get(key))
            {
                mine.retain(|k, _| !theirs.contains_key(k) || published.contains(k));
            }
        }
    }
    let old_id = old.get("Id").and_then(Value::as_str).unwrap_or("");
    if old_id.len() >= 12 && config.get("Hostname").and_then(Value::as_str) == Some(&old_id[..12]) {
        body.remove("Hostname");
    }
    // Empty leftovers mean "unset".
    body.retain(|_, v| !is_empty_value(v));

    // HostConfig, plus the old anonymous volumes mounted by name.
    let mut host_config = old
        .get("HostConfig")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // `--mount type=volume,dst=/x` (and compose's anonymous volumes) name no source: point them
    // at the volume the old container got, or the new one would start empty.
    if let Some(Value::Array(mounts)) = host_config.get_mut("Mounts") {
        for m in mounts.iter_mut() {
            let is_volume = m.get("Type").and_then(Value::as_str) == Some("volume");
            let no_source = m
                .get("Source")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            let target = m
                .get("Target")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if is_volume && no_source {
                if let Some(name) = volume_at(old, &target) {
                    m["Source"] = Value::String(name);
                }
            }
        }
    }
    let anonymous = anonymous_volumes(old, &host_config);
    if !anonymous.is_empty() {
        if let Some(Value::Object(volumes)) = body.get_mut("Volumes") {
            for (_, target, _) in &anonymous {
                volumes.remove(target);
            }
            if volumes.is_empty() {
                body.remove("Volumes");
            }
        }
        let mounts = host_config
            .entry("Mounts")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !mounts.is_array() {
            *mounts = Value::Array(Vec::new());
        }
        if let Value::Array(list) = mounts {
            for (name, target, rw) in anonymous {
                list.push(serde_json::json!({
                    "Type": "volume",
                    "Source": name,
                    "Target": target,
                    "ReadOnly": !rw,
                }));
            }
        }
    }

    // Networks.
    let network_mode = host_config
        .get("NetworkMode")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if network_mode.starts_with("container:") {
        // These were inherited from the other container; the engine refuses them in this mode.
        for key in ["Hostname", "Domainname", "MacAddress", "ExposedPorts"] {
            body.remove(key);
        }
        for key in [
            "Dns",
            "DnsOptions",
            "DnsSearch",
            "ExtraHosts",
            "PortBindings",
            "PublishAllPorts",
        ] {
            host_config.remove(key);
        }
    }
    let primary = match network_mode.as_str() {
        "default" | "" => Some("bridge".to_string()),
        "host" | "none" => None,
        m if m.starts_with("container:") => None,
        m => Some(m.to_string()),
    };
    let mut endpoints = Map::new();
    let mut extra_networks = Vec::new();
    if let Some(Value::Object(networks)) = old.pointer("/NetworkSettings/Networks") {
        for (name, ep) in networks {
            let settings = endpoint_config(ep, old_id);
            // NetworkMode may hold the network's name or (a prefix of) its id.
            let is_primary = primary.as_ref().is_some_and(|p| {
                p == name
                    || ep
                        .get("NetworkID")
                        .and_then(Value::as_str)
                        .is_some_and(|id| !p.is_empty() && id.starts_with(p.as_str()))
            });
            if is_primary {
                endpoints.insert(primary.clone().unwrap_or_default(), settings);
            } else if primary.is_some() {
                extra_networks.push((name.clone(), settings));
            }
        }
    }
    extra_networks.sort_by(|a, b| a.0.cmp(&b.0));
    body.insert("HostConfig".into(), Value::Object(host_config));
    if !endpoints.is_empty() {
        body.insert(
            "NetworkingConfig".into(),
            serde_json::json!({ "EndpointsConfig": endpoints }),
        );
    }
    CreatePlan {
        body: Value::Object(body),
        extra_networks,
    }
}

/// The settings of one network endpoint that the user chose (not what the engine assigned).
fn endpoint_config(ep: &Value, old_id: &str) -> Value {
    let mut out = Map::new();
    let short = old_id.get(..12).unwrap_or(old_id);
    if let Some(Value::Array(aliases)) = ep.get("Aliases") {
        let kept: Vec<Value> = aliases
            .iter()
            .filter(|a| a.as_str().is_some_and(|a| a != short && a != old_id))
            .cloned()
            .collect();
        if !kept.is_empty() {
            out.insert("Aliases".into(), Value::Array(kept));
        }
    }
    for key in ["IPAMConfig", "Links", "DriverOpts"] {
        if let Some(v) = ep.get(key) {
            if !is_empty_value(v) {
                out.insert(key.into(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// The name of the volume mounted at `target` in the old container.
fn volume_at(old: &Value, target: &str) -> Option<String> {
    old.get("Mounts")?.as_array()?.iter().find_map(|m| {
        let dest = m.get("Destination").and_then(Value::as_str)?;
        let name = m.get("Name").and_then(Value::as_str)?;
        (dest == target && !name.is_empty()).then(|| name.to_string())
    })
}

/// Volumes mounted into the old container that no bind or mount in its HostConfig names:
/// (volume name, target, read-write).
fn anonymous_volumes(old: &Value, host_config: &Map<String, Value>) -> Vec<(String, String, bool)> {
    let mut explicit: Vec<String> = Vec::new();
    if let Some(Value::Array(binds)) = host_config.get("Binds") {
        for b in binds.iter().filter_map(Value::as_str) {
            let mut parts = b.split(':');
            let first = parts.next().unwrap_or("");
            explicit.push(parts.next().unwrap_or(first).to_string());
        }
    }
    if let Some(Value::Array(mounts)) = host_config.get("Mounts") {
        for m in mounts {
            if let Some(t) = m.get("Target").and_then(Value::as_str) {
                explicit.push(t.to_string());
            }
        }
    }
    let mut out = Vec::new();
    if let Some(Value::Array(mounts)) = old.get("Mounts") {
        for m in mounts {
            let is_volume = m.get("Type").and_then(Value::as_str) == Some("volume");
            let name = m.get("Name").and_then(Value::as_str).unwrap_or("");
            let target = m.get("Destination").and_then(Value::as_str).unwrap_or("");
            if is_volume
                && !name.is_empty()
                && !target.is_empty()
                && !explicit.iter().any(|e| e == target)
            {
                let rw = m.get("RW").and_then(Value::as_bool).unwrap_or(true);
                out.push((name.to_string(), target.to_string(), rw));
            }
        }
    }
    out
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    let norm = |v: Option<&Value>| v.filter(|v| !is_empty_value(v)).cloned();
    norm(a) == norm(b)
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn str_set(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn old_container() -> Value {
        json!({
            "Id": "0123456789abcdef0123",
            "Name": "/web",
            "Config": {
                "Hostname": "0123456789ab",
                "Env": ["PATH=/usr/bin", "APP_VERSION=v1", "FOO=bar"],
                "Cmd": ["serve"],
                "Entrypoint": ["/app"],
                "Image": "reg:5000/app:v1",
                "Labels": {"img.label": "v1", "com.docker.compose.service": "web", "mine": "x"},
                "WorkingDir": "/srv",
                "User": "1000",
                "Healthcheck": {"Test": ["CMD", "/app", "--check"]},
                "ExposedPorts": {"8080/tcp": {}, "9000/tcp": {}},
                "Volumes": {"/data": {}},
                "MacAddress": "02:00:00:00:00:07",
                "StopSignal": "SIGINT",
                "ArgsEscaped": true
            },
            "HostConfig": {
                "NetworkMode": "appnet",
                "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
                "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]},
                "Binds": ["named:/named", "/host/dir:/hostdir:ro"],
                "Memory": 67108864
            },
            "Mounts": [
                {"Type": "volume", "Name": "named", "Destination": "/named", "RW": true},
                {"Type": "bind", "Source": "/host/dir", "Destination": "/hostdir", "RW": false},
                {"Type": "volume", "Name": "abc123anon", "Destination": "/data", "RW": true}
            ],
            "NetworkSettings": {"Networks": {
                "appnet": {
                    "Aliases": ["web", "0123456789ab"],
                    "IPAMConfig": {"IPv4Address": "10.9.0.5"},
                    "IPAddress": "10.9.0.5",
                    "NetworkID": "n1"
                },
                "other": {"Aliases": null, "IPAMConfig": null, "IPAddress": "10.8.0.2"}
            }}
        })
    }

    fn old_image() -> Value {
        json!({"Config": {
            "Env": ["PATH=/usr/bin", "APP_VERSION=v1"],
            "Cmd": ["serve"],
            "Entrypoint": ["/app"],
            "Labels": {"img.label": "v1"},
            "WorkingDir": "/srv",
            "User": "",
            "Healthcheck": {"Test": ["CMD", "/app", "--check"]},
            "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGINT"
        }})
    }

    #[test]
    fn image_defaults_are_dropped_and_user_settings_kept() {
        let p = plan(&old_container(), Some(&old_image()), "reg:5000/app:v2");
        let b = &p.body;
        assert_eq!(b["Image"], "reg:5000/app:v2");
        assert_eq!(b["Env"], json!(["FOO=bar"]));
        assert_eq!(
            b["Labels"],
            json!({"com.docker.compose.service": "web", "mine": "x"})
        );
        for gone in [
            "Cmd",
            "Entrypoint",
            "WorkingDir",
            "Healthcheck",
            "StopSignal",
            "Hostname",
            "ArgsEscaped",
            "Volumes",
        ] {
            assert!(b.get(gone).is_none(), "{gone} should be dropped: {b}");
        }
        assert_eq!(b["User"], "1000", "user set by the container is kept");
        assert_eq!(
            b["ExposedPorts"],
            json!({"8080/tcp": {}, "9000/tcp": {}}),
            "a published port stays exposed even though the old image exposed it"
        );
        assert_eq!(b["MacAddress"], "02:00:00:00:00:07");
        let hc = &b["HostConfig"];
        assert_eq!(hc["RestartPolicy"]["Name"], "always");
        assert_eq!(hc["PortBindings"]["8080/tcp"][0]["HostPort"], "18080");
        assert_eq!(hc["Memory"], 67108864);
        assert_eq!(
            hc["Mounts"],
            json!([{"Type": "volume", "Source": "abc123anon", "Target": "/data", "ReadOnly": false}]),
            "the anonymous volume is carried by name"
        );
        let ep = &b["NetworkingConfig"]["EndpointsConfig"]["appnet"];
        assert_eq!(ep["Aliases"], json!(["web"]));
        assert_eq!(ep["IPAMConfig"]["IPv4Address"], "10.9.0.5");
        assert!(ep.get("IPAddress").is_none() && ep.get("NetworkID").is_none());
        assert_eq!(p.extra_networks, vec![("other".to_string(), json!({}))]);
    }

    #[test]
    fn user_entrypoint_keeps_cmd_and_unknown_image_keeps_everything() {
        let mut old = old_container();
        old["Config"]["Entrypoint"] = json!(["/other"]);
        let p = plan(&old, Some(&old_image()), "x");
        assert_eq!(p.body["Entrypoint"], json!(["/other"]));
        assert_eq!(p.body["Cmd"], json!(["serve"]));
        let p = plan(&old_container(), None, "x");
        assert_eq!(
            p.body["Env"],
            json!(["PATH=/usr/bin", "APP_VERSION=v1", "FOO=bar"])
        );
        assert_eq!(p.body["Cmd"], json!(["serve"]));
    }

    #[test]
    fn sourceless_volume_mounts_keep_their_volume_and_network_ids_work() {
        let mut old = old_container();
        old["HostConfig"]["Mounts"] = json!([{"Type": "volume", "Target": "/m"}]);
        old["Mounts"] =
            json!([{"Type": "volume", "Name": "anon-m", "Destination": "/m", "RW": true}]);
        old["HostConfig"]["NetworkMode"] = json!("n1");
        let p = plan(&old, Some(&old_image()), "x");
        assert_eq!(
            p.body["HostConfig"]["Mounts"],
            json!([{"Type": "volume", "Target": "/m", "Source": "anon-m"}])
        );
        // NetworkMode names the network by id: it is the primary one, not connected twice.
        assert!(p.body["NetworkingConfig"]["EndpointsConfig"]["n1"].is_object());
        assert_eq!(p.extra_networks, vec![("other".to_string(), json!({}))]);
    }

    #[test]
    fn default_bridge_host_and_shared_namespaces() {
        let mut old = old_container();
        old["HostConfig"]["NetworkMode"] = json!("default");
        old["NetworkSettings"]["Networks"] =
            json!({"bridge": {"Aliases": null, "IPAddress": "172.17.0.2"}});
        let p = plan(&old, Some(&old_image()), "x");
        assert_eq!(
            p.body["NetworkingConfig"]["EndpointsConfig"],
            json!({"bridge": {}})
        );
        assert!(p.extra_networks.is_empty());
        old["HostConfig"]["NetworkMode"] = json!("container:abc");
        old["Config"]["Hostname"] = json!("other-host");
        let p = plan(&old, Some(&old_image()), "x");
        assert!(p.body.get("NetworkingConfig").is_none());
        for gone in ["Hostname", "MacAddress", "ExposedPorts"] {
            assert!(
                p.body.get(gone).is_none(),
                "{gone} must go in container: mode"
            );
        }
        assert!(p.body["HostConfig"].get("PortBindings").is_none());
        assert!(p.extra_networks.is_empty());
        assert_eq!(p.body["HostConfig"]["NetworkMode"], "container:abc");
    }
}
