//! Every method this server has, read once from the descriptors it is built
//! from: its `package.Service/Method` name (a metric label) and whether its
//! response is a stream.

use std::{collections::HashMap, sync::LazyLock};

use prost::Message;

use crate::pb;

/// What the server knows of one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Method {
    /// `package.Service/Method`.
    pub(crate) name: &'static str,
    /// The response is a stream (a watch, reflection): it may stay open for hours.
    pub(crate) streaming: bool,
}

/// The methods by request path.
static METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    let sets = [
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let name = format!("{}.{}/{}", file.package(), service.name(), method.name());
                    // Leaked once: a handful of names that label metrics for
                    // the life of the process.
                    let label: &'static str = Box::leak(name.clone().into_boxed_str());
                    let streaming = method.server_streaming() || method.client_streaming();
                    methods.insert(
                        format!("/{name}"),
                        Method {
                            name: label,
                            streaming,
                        },
                    );
                }
            }
        }
    }
    methods
});

/// The method a request path names, if the server has it.
pub(crate) fn lookup(path: &str) -> Option<Method> {
    METHODS.get(path).copied()
}

/// The name of the method a path names; `unknown` for any other path, so a
/// caller cannot grow the metrics with made-up paths.
pub(crate) fn name(path: &str) -> &'static str {
    lookup(path).map_or("unknown", |m| m.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_server_has_its_name_and_others_are_unknown() {
        for (method, streaming) in [
            ("CreateVoiceClone", false),
            ("GetVoice", false),
            ("ListUserVoices", false),
            ("UpdateVoice", false),
            ("DeleteVoice", false),
            ("WatchVoiceStatus", true),
        ] {
            let path = format!("/voicehub.v1.VoiceService/{method}");
            let found = lookup(&path).unwrap();
            assert_eq!((found.name, found.streaming), (&path[1..], streaming));
        }
        assert_eq!(
            name("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert!(lookup("/grpc.health.v1.Health/Watch").unwrap().streaming);
        assert_eq!(
            name("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(name("/voicehub.v1.VoiceService/Nope"), "unknown");
        assert_eq!(name("/x"), "unknown");
    }
}
