"""Take events from input bindings with the Dapr SDK's App: new orders from a NATS subject and a
tick every second from a cron schedule. Start it beside `l8 run --app-port 50051` (APP_PORT picks
another port) with these components in l8's config:

    components:
      orders-in: {kind: bindings, type: nats, metadata: {subject: orders.new}}
      every-second: {kind: bindings, type: cron, metadata: {schedule: "@every 1s"}}

An exception in a handler is an error for l8, which delivers the event again with backoff.
"""

import os

from dapr.ext.grpc import App, BindingRequest

app = App()


@app.binding("orders-in")
def new_order(request: BindingRequest) -> None:
    print("order", request.text(), flush=True)


@app.binding("every-second")
def tick(request: BindingRequest) -> None:
    print("tick", request.binding_metadata["readTimeUTC"], flush=True)


app.run(int(os.environ.get("APP_PORT", "50051")), listen_address="127.0.0.1")
