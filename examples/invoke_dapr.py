"""Invoke a method of an app through l8, with the Dapr SDK: the App serves `greet`, and the client
invokes it by app id through the sidecar (here the app's own). Start it beside `l8 run --app-port
50051` (APP_PORT picks another port; APP_ID names the app, `l8-app` on the default config).

Another app invokes it the same way through its own sidecar on the same bus.
"""

import os
import threading
import time

os.environ.setdefault("DAPR_HTTP_PORT", "34999")

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprInternalError
from dapr.ext.grpc import App, InvokeMethodRequest

app = App()


@app.method(name="greet")
def greet(request: InvokeMethodRequest) -> str:
    return f"hello, {request.text()}"


port = int(os.environ.get("APP_PORT", "50051"))
threading.Thread(target=app.run, args=(port, "127.0.0.1"), daemon=True).start()
with DaprClient() as client:
    # Until l8 has reached the app, an invocation answers UNAVAILABLE (HTTP 500 from the SDK).
    deadline = time.monotonic() + 30
    while True:
        try:
            reply = client.invoke_method(os.environ.get("APP_ID", "l8-app"), "greet", data="ada", http_verb="POST")
            break
        except DaprInternalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    print(reply.text())
app.stop()
