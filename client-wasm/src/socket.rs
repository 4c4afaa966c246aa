//! The browser's WebSocket as a stream of events: each socket tags its events with a
//! generation number so events of a closed socket are told apart after a reconnect.

use futures_channel::mpsc::UnboundedSender;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// What happens, in order, on the client's one event queue.
pub enum Event {
    /// Socket `generation` opened.
    Open(u64),
    /// A binary frame arrived on socket `generation`.
    Frame(u64, Vec<u8>),
    /// Socket `generation` closed or failed.
    Closed(u64, String),
    /// Time for a heartbeat.
    Beat,
    /// The page asked to stop contributing for now.
    Pause,
    /// The page asked to contribute again.
    Resume,
    /// The page changed the share of time the GPU may be busy.
    GpuShare(f64),
    /// Destroy the GPU device (a recovery check).
    LoseDevice,
}

/// An open (or opening) WebSocket whose events go to the client's queue.
pub struct Socket {
    ws: WebSocket,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    /// Connects to `url`; events are tagged with `generation`.
    pub fn connect(
        url: &str,
        generation: u64,
        tx: UnboundedSender<Event>,
    ) -> Result<Self, JsValue> {
        let ws = WebSocket::new(url)?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let on = |f: Box<dyn FnMut(JsValue)>| Closure::wrap(f);
        let t = tx.clone();
        let open = on(Box::new(move |_| {
            let _ = t.unbounded_send(Event::Open(generation));
        }));
        let t = tx.clone();
        let message = on(Box::new(move |e: JsValue| {
            let Ok(e) = e.dyn_into::<MessageEvent>() else {
                return;
            };
            if let Ok(buf) = e.data().dyn_into::<js_sys::ArrayBuffer>() {
                let bytes = js_sys::Uint8Array::new(&buf).to_vec();
                let _ = t.unbounded_send(Event::Frame(generation, bytes));
            }
        }));
        let t = tx.clone();
        let close = on(Box::new(move |e: JsValue| {
            let why = e
                .dyn_into::<CloseEvent>()
                .map(|c| {
                    format!(
                        "closed (code {}{})",
                        c.code(),
                        if c.reason().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", c.reason())
                        }
                    )
                })
                .unwrap_or_else(|_| "closed".into());
            let _ = t.unbounded_send(Event::Closed(generation, why));
        }));
        let t = tx;
        let error = on(Box::new(move |_| {
            let _ = t.unbounded_send(Event::Closed(generation, "connection failed".into()));
        }));
        ws.set_onopen(Some(open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(close.as_ref().unchecked_ref()));
        ws.set_onerror(Some(error.as_ref().unchecked_ref()));
        Ok(Socket {
            ws,
            _handlers: vec![open, message, close, error],
        })
    }

    /// Sends one binary frame.
    pub fn send(&self, bytes: &[u8]) -> Result<(), JsValue> {
        self.ws.send_with_u8_array(bytes)
    }

    /// Closes the socket and stops its events.
    pub fn close(&self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close();
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.close();
    }
}
