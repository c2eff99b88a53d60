// The official Dapr JS SDK (npm `@dapr/dapr`) as a client of an l8 sidecar, over HTTP or gRPC.
// Usage: node dapr_client.js http|grpc SCENARIO, with DAPR_HTTP_PORT and DAPR_GRPC_PORT set.
// Each scenario prints one JSON line of what it saw; the Python test checks it.
'use strict';

const { DaprClient, CommunicationProtocolEnum, HttpMethod } = require('@dapr/dapr');
const { LockStatus } = require('@dapr/dapr/types/lock/UnlockResponse');

const protocol = process.argv[2];
const grpc = protocol === 'grpc';
const client = new DaprClient({
  daprHost: '127.0.0.1',
  daprPort: grpc ? process.env.DAPR_GRPC_PORT : process.env.DAPR_HTTP_PORT,
  communicationProtocol: grpc ? CommunicationProtocolEnum.GRPC : CommunicationProtocolEnum.HTTP,
  logger: { level: 0 },
});
const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is not set`);
  return process.env[name];
};
const prefix = `js-${protocol}`;

const scenarios = {
  async state() {
    const store = 'statestore';
    const saved = await client.state.save(store, [
      { key: `${prefix}-a`, value: { qty: 1 } },
      { key: `${prefix}-b`, value: 'text' },
    ]);
    if (saved.error) throw saved.error;
    const a = await client.state.get(store, `${prefix}-a`);
    const bulk = await client.state.getBulk(store, [`${prefix}-a`, `${prefix}-b`]);
    await client.state.transaction(store, [
      { operation: 'upsert', request: { key: `${prefix}-t`, value: 'in-tx' } },
      { operation: 'delete', request: { key: `${prefix}-b` } },
    ]);
    const t = await client.state.get(store, `${prefix}-t`);
    const b = await client.state.get(store, `${prefix}-b`);
    const deleted = await client.state.delete(store, `${prefix}-a`);
    if (deleted.error) throw deleted.error;
    const gone = await client.state.get(store, `${prefix}-a`);
    return {
      a,
      bulk: bulk.map((item) => [item.key, item.data]).sort(),
      t,
      b: b === '' || b === undefined || b === null ? null : b,
      gone: gone === '' || gone === undefined || gone === null ? null : gone,
    };
  },

  async publish() {
    const one = await client.pubsub.publish('pubsub', env('TOPIC'), { from: 'dapr-js', n: 1 });
    if (one.error) throw one.error;
    const bulk = await client.pubsub.publishBulk('pubsub', env('TOPIC'), [{ n: 2 }, { n: 3 }]);
    return { failed: bulk.failedMessages.length };
  },

  async invoke() {
    const res = await client.invoker.invoke(env('TARGET'), 'echo', HttpMethod.POST, { hello: protocol });
    return { res };
  },

  async lock() {
    const store = 'lockstore';
    const resource = `${prefix}-resource`;
    const first = await client.lock.lock(store, resource, 'owner-1', 30);
    const second = await client.lock.lock(store, resource, 'owner-2', 30);
    const byOther = await client.lock.unlock(store, resource, 'owner-2');
    const byOwner = await client.lock.unlock(store, resource, 'owner-1');
    const again = await client.lock.unlock(store, resource, 'owner-1');
    return {
      first: first.success,
      second: second.success,
      byOther: byOther.status === LockStatus.LockBelongsToOthers,
      byOwner: byOwner.status === LockStatus.Success,
      again: again.status === LockStatus.LockDoesNotExist,
    };
  },

  async metadata() {
    await client.metadata.set(`${prefix}-attr`, 'set-by-js');
    const got = await client.metadata.get();
    return {
      id: got.id,
      attr: got.extended[`${prefix}-attr`],
      components: got.components.map((c) => [c.name, c.type, c.capabilities]).sort(),
    };
  },

  async configuration() {
    // The Dapr SDK has no configuration writes; Layotto's SDK writes through l8's native API.
    const { Client } = require('layotto');
    const writer = new Client(process.env.DAPR_GRPC_PORT);
    const store = 'configstore';
    const key = `${prefix}-color`;
    const seen = [];
    const stream = await client.configuration.subscribeWithKeys(store, [key], (res) => {
      seen.push(...Object.entries(res.items).map(([k, v]) => [k, v.value]));
    });
    const deadline = Date.now() + 30000;
    for (let n = 1; !seen.some(([, value]) => value.startsWith('red')); n += 1) {
      if (Date.now() > deadline) throw new Error(`no change arrived: ${JSON.stringify(seen)}`);
      await writer.configuration.save({ storeName: store, appId: 'js', items: [{ key, content: `red-${n}` }] });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const got = await client.configuration.get(store, [key]);
    stream.stop();
    writer.close();
    return { got: Object.entries(got.items).map(([k, v]) => [k, v.value.startsWith('red')]), changed: true };
  },
};

const scenario = scenarios[process.argv[3]];
if (!scenario || !['http', 'grpc'].includes(protocol)) {
  process.stderr.write(`usage: node dapr_client.js http|grpc ${Object.keys(scenarios).join('|')}\n`);
  process.exit(2);
}
scenario()
  .then(async (result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    await client.stop();
    process.exit(0);
  })
  .catch((err) => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
  });
