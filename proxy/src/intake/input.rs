//! Weir's generic intake, `POST /v1/input`: one log per line, a JSON log
//! object (Datadog's shape) or plain text, for senders with no Datadog output.
//! Keys, `ddtags` and answers are those of the Datadog intake.
use super::core::Decode;
use super::datadog::{api_key, Datadog};
use super::http::{add_tags, query_tags, Answer, Endpoint, HttpProtocol};
use super::lines::decode_lines;
use super::Refusal;
use crate::event::{Event, Intake, PayloadLimits};
use http::request::Parts;
use http::Method;

pub const PATH: &str = "/v1/input";

pub struct Input;

/// One request's body: its lines, and the request's tags.
pub struct InputBody {
    tags: Vec<String>,
}

impl HttpProtocol for Input {
    const INTAKE: Intake = Intake::Generic;
    const KEY_HINT: &'static str = Datadog::KEY_HINT;
    type Body = InputBody;

    fn endpoint(&self, _method: &Method, path: &str) -> Option<Endpoint> {
        (path == PATH).then_some(Endpoint::Submit)
    }

    fn key(&self, head: &Parts) -> Option<String> {
        api_key(&head.headers, head.uri.query())
    }

    fn body(&self, head: &mut Parts) -> Result<InputBody, Refusal> {
        Ok(InputBody {
            tags: query_tags(head.uri.query()),
        })
    }

    fn accepted(&self, endpoint: Endpoint, head: &Parts) -> Answer {
        Datadog.accepted(endpoint, head)
    }

    fn refused(&self, r: &Refusal, head: &Parts) -> Answer {
        Datadog.refused(r, head)
    }
}

impl Decode for InputBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        let mut events = decode_lines(payload, limits, true, admit)?;
        add_tags(&mut events, &self.tags);
        Ok(events)
    }
}
