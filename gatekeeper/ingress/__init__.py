"""Client wires other than chat completions, as pure adapters around the one pipeline.

messages_wire     Anthropic Messages request → chat request; chat reply → Message
messages_stream   chat chunk stream → Anthropic stream events
messages          /v1/messages endpoints: x-api-key auth, Anthropic's error shape,
                  the native pass-through when an Anthropic provider serves it
responses_wire    OpenAI Responses request → chat request; chat reply → Response
responses_stream  chat chunk stream → Responses stream events
responses         /v1/responses endpoints (create, get, delete, input_items)
store             stored responses in KV BH_RESPONSES (per tenant, signed values)
chunks            the chat chunk stream read back as values (shared)
routes            the routes ``app.create_app`` adds (its config: ``gatekeeper.ingressconfig``)
"""
