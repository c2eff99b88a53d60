// Layotto's published Node SDK (npm `layotto`), used as its README shows, against an l8 sidecar.
// Usage: node layotto_client.js SCENARIO; the sidecar's port is in runtime_GRPC_PORT (the SDK's
// own variable). Each scenario prints one JSON line of what it saw; the Python test checks it.
'use strict';

const { Client } = require('layotto');

const client = new Client();
const out = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const text = (bytes) => Buffer.from(bytes).toString('utf8');
const env = (name) => {
  if (!process.env[name]) throw new Error(`${name} is not set`);
  return process.env[name];
};

const scenarios = {
  async hello() {
    return {
      plain: await client.hello.sayHello(),
      named: await client.hello.sayHello({ serviceName: 'helloworld', name: 'layotto' }),
    };
  },

  async state() {
    const storeName = 'statestore';
    await client.state.save({ storeName, states: [{ key: 'js-a', value: 'alpha' }, { key: 'js-b', value: 'beta' }] });
    // The SDK sends etag "0" when none is given: saving again must not be an etag mismatch.
    await client.state.save({ storeName, states: { key: 'js-a', value: 'alpha-2' } });
    const a = await client.state.get({ storeName, key: 'js-a' });
    const missing = await client.state.get({ storeName, key: 'js-missing' });
    const bulk = await client.state.getBulk({ storeName, keys: ['js-a', 'js-b', 'js-missing'] });
    await client.state.executeTransaction({
      storeName,
      operations: [
        { operationType: 'upsert', request: { key: 'js-t', value: 'in-transaction' } },
        { operationType: 'delete', request: { key: 'js-b' } },
      ],
    });
    const t = await client.state.get({ storeName, key: 'js-t' });
    let stale = null;
    try {
      await client.state.save({ storeName, states: { key: 'js-a', value: 'x', etag: '999999' } });
    } catch (err) {
      stale = err.code;
    }
    await client.state.delete({ storeName, key: 'js-a' });
    const deleted = await client.state.get({ storeName, key: 'js-a' });
    await client.state.save({ storeName, states: { key: 'js-keep', value: 'kept' } });
    return {
      a: text(a.value),
      etag: a.etag,
      missing,
      bulk: bulk.map((item) => [item.key, text(item.value)]).sort(),
      t: text(t.value),
      b: await client.state.get({ storeName, key: 'js-b' }),
      stale,
      deleted,
    };
  },

  async publish() {
    await client.pubsub.publish({ pubsubName: 'pubsub', topic: env('TOPIC'), data: { from: 'layotto', n: 1 } });
    return { published: true };
  },

  async invoke() {
    const res = await client.invoker.invoke({ id: env('TARGET'), method: 'echo', data: { hello: 'app' } });
    const text_ = await client.invoker.invoke({ id: env('TARGET'), method: 'echo', data: 'plain words' });
    let unknown = null;
    try {
      await client.invoker.invoke({ id: 'nobody-runs-this', method: 'echo' });
    } catch (err) {
      unknown = err.code;
    }
    return { json: res, text: text_, unknown };
  },

  async configuration() {
    const storeName = 'configstore';
    const appId = 'js-app';
    const seen = [];
    let closed = false;
    const call = client.configuration.subscribe({
      storeName,
      appId,
      keys: ['js-color', 'js-fence'],
      onData(items) {
        seen.push(items.map((i) => [i.key, i.content]));
      },
      onClose() {
        closed = true;
      },
    });
    // Poll until the subscription is live: a fence written now or later must show up.
    const deadline = Date.now() + 30000;
    let n = 0;
    while (!seen.some((items) => items.some(([key]) => key === 'js-fence'))) {
      if (Date.now() > deadline) throw new Error(`no change arrived: ${JSON.stringify(seen)}`);
      n += 1;
      await client.configuration.save({ storeName, appId, items: [{ key: 'js-fence', content: `probe-${n}` }] });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const before = seen.length;
    await client.configuration.save({ storeName, appId, items: [{ key: 'js-color', content: 'red' }] });
    const got = await client.configuration.get({ storeName, appId, keys: ['js-color', 'js-none'] });
    await client.configuration.delete({ storeName, appId, keys: ['js-color'] });
    await client.configuration.save({ storeName, appId, items: [{ key: 'js-fence', content: 'end' }] });
    while (!seen.slice(before).some((items) => items.some(([key, content]) => key === 'js-fence' && content === 'end'))) {
      if (Date.now() > deadline) throw new Error(`the fence did not arrive: ${JSON.stringify(seen)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const endedEarly = closed;
    call.cancel();
    return {
      got: got.map((i) => [i.key, i.content, i.group]),
      changes: seen.slice(before).flat().filter(([key]) => key === 'js-color'),
      empty: seen.filter((items) => items.length === 0).length,
      endedEarly,
    };
  },

  async lock() {
    const storeName = 'lockstore';
    const resourceId = 'js-resource';
    const owner = client.lock.uuid();
    const other = client.lock.uuid();
    const first = await client.lock.tryLock({ storeName, resourceId, lockOwner: owner, expire: 30 });
    const second = await client.lock.tryLock({ storeName, resourceId, lockOwner: other, expire: 30 });
    const byOther = await client.lock.unLock({ storeName, resourceId, lockOwner: other });
    const byOwner = await client.lock.unLock({ storeName, resourceId, lockOwner: owner });
    const again = await client.lock.unLock({ storeName, resourceId, lockOwner: owner });
    let invalid = null;
    try {
      await client.lock.tryLock({ storeName, resourceId, lockOwner: owner, expire: 0 });
    } catch (err) {
      invalid = err.code;
    }
    return { first, second, byOther: byOther.status, byOwner: byOwner.status, again: again.status, invalid };
  },

  async sequencer() {
    const ids = [];
    for (let i = 0; i < 5; i += 1) {
      ids.push(await client.sequencer.getNextId({ storeName: 'sequencer', key: 'js-order' }));
    }
    const strong = await client.sequencer.getNextId({ storeName: 'sequencer', key: 'js-order', options: { increment: 1 } });
    return { ids, strong };
  },
};

const scenario = scenarios[process.argv[2]];
if (!scenario) {
  process.stderr.write(`usage: node layotto_client.js ${Object.keys(scenarios).join('|')}\n`);
  process.exit(2);
}
scenario()
  .then((result) => {
    out(result);
    client.close();
  })
  .catch((err) => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
  });
