// Layotto's Node SDK subscriber server (npm `layotto`, its `Server`) as an app behind an l8 sidecar.
// Usage: node layotto_server.js; appcallback_GRPC_PORT (the SDK's own variable), TOPIC. It declares
// `<TOPIC>-a` and `<TOPIC>-b` on `pubsub` through ListTopicSubscriptions; the handler of -b throws
// on its first event (Layotto's SDK answers RETRY). Each event it takes is one JSON line.
'use strict';

const { Server } = require('layotto');

const out = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const topic = process.env.TOPIC;
const quiet = { info() {}, warn() {}, error() {}, debug() {}, log() {} };

async function main() {
  const server = new Server(process.env.appcallback_GRPC_PORT, undefined, { logger: quiet });
  let failed = false;
  const record = (name) => async (data, request) => {
    if (name === 'b' && !failed) {
      failed = true;
      out({ topic: request.topic, failed: request.id });
      throw new Error('not yet');
    }
    out({ topic: request.topic, id: request.id, data, metadata: request.metadata, type: request.dataContentType });
  };
  for (const name of ['a', 'b']) {
    server.pubsub.subscribe('pubsub', `${topic}-${name}`, record(name));
    server.pubsub.addPubSubSubscription('pubsub', `${topic}-${name}`, { origin: 'layotto-js' });
  }
  await server.start();
  out('ready');
  process.on('SIGTERM', async () => {
    await server.close();
    process.exit(0);
  });
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
