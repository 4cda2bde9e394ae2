"""The OpenAI-compatible capture proxy: an agent in any language changes its ``base_url`` and every
model call it makes is relayed to the real endpoint and recorded as a trajectory.

``trajforge proxy --upstream http://127.0.0.1:11434/v1`` serves :class:`ProxyApp` on its own;
``trajforge serve --upstream URL`` mounts the same app under ``/proxy``. A request to ``/v1/X`` goes
to ``<upstream>/X`` (``ROUTES``): its body, query and headers unchanged but for hop-by-hop headers
and ours (``X-Trajforge-*``), which are not forwarded; the answer comes back unchanged (status,
headers, error bodies), and a ``text/event-stream`` answer is relayed chunk by chunk as it arrives.

Grouping, by optional request headers (``GROUPING_HEADERS``): ``X-Trajforge-Trajectory`` (or
``Helicone-Session-Id``) puts the call in that trajectory, one step per call unless
``X-Trajforge-Step: N`` names the step; ``X-Trajforge-Agent``, ``-Source``, ``-Scenario`` describe
it; ``X-Trajforge-End: true`` completes it after this call. Without them each call is a trajectory
of its own (source ``proxy``). A bad value is refused (400 naming the header) before anything is
sent upstream.

Recording never delays or breaks a call. The client's bytes are sent first; the record is built
from a copy afterwards (with :data:`trajforge.capture.openai.CONVERSIONS`, the same conversion the
SDK instrumentation uses) and handed to a :class:`BackgroundWriter`, which spools it while the store
is down. An upstream error is relayed as it came and recorded as an error call; an unreachable
upstream is a 502 (504 on a timeout) with an OpenAI-shaped error body. The caller's credentials
(``Authorization``, ``api-key``, ``OpenAI-Organization``...) go to the upstream and nowhere else:
no header is recorded or logged. trajforge's own token, when set, is sent as ``X-Trajforge-Token``
since ``Authorization`` belongs to the upstream.
"""

from trajforge.proxy.app import ROUTES, TOKEN_HEADER, ProxyApp, check_upstream, error_body, public_url
from trajforge.proxy.record import GROUPING_HEADERS, Grouping, parse_grouping, proxy_writer, store_writer

__all__ = [
    "GROUPING_HEADERS",
    "ROUTES",
    "TOKEN_HEADER",
    "Grouping",
    "ProxyApp",
    "check_upstream",
    "error_body",
    "parse_grouping",
    "proxy_writer",
    "public_url",
    "store_writer",
]
