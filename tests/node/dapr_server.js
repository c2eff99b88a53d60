// The Dapr JS SDK's DaprServer (npm `@dapr/dapr`) as an app behind an l8 sidecar, as its docs use it.
// Usage: node dapr_server.js http|grpc; APP_PORT (its server), DAPR_PORT (the sidecar's port for that
// protocol), TOPIC. It subscribes to TOPIC on `pubsub` and serves the method `hello`; each event it
// takes is printed as one JSON line, and "ready" once it serves.
'use strict';

const { DaprServer, CommunicationProtocolEnum, HttpMethod } = require('@dapr/dapr');

const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is not set`);
  return process.env[name];
};
const out = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

async function main() {
  const protocol = process.argv[2] === 'grpc' ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP;
  const server = new DaprServer({
    serverHost: '127.0.0.1',
    serverPort: env('APP_PORT'),
    communicationProtocol: protocol,
    clientOptions: { daprHost: '127.0.0.1', daprPort: env('DAPR_PORT'), communicationProtocol: protocol },
    logger: { level: 0 },
  });
  await server.pubsub.subscribe('pubsub', env('TOPIC'), async (data, headers) => {
    out({ event: data, headers: headers || {} });
  });
  await server.invoker.listen('hello', async (data) => {
    const body = typeof data.body === 'string' ? data.body : JSON.stringify(data.body ?? null);
    return { hello: body, query: data.query ?? '' };
  }, { method: HttpMethod.POST });
  await server.start();
  out('ready');
  const stop = async () => {
    await server.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
