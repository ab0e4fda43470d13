//! SPDY/3.1, as the Kubernetes streaming protocols use it (the API server and kubelet speak it
//! to the runtime's streaming server; kubectl and crictl, too, unless they use WebSocket):
//! `dictionary` (the header compression dictionary), `frame` (frames and header blocks).

pub mod dictionary;
pub mod frame;
