/** A small typed event emitter (no dependency on Node's events module). */
export class Emitter<Events extends { [K in keyof Events]: (...args: any[]) => void }> {
  private handlers = new Map<keyof Events, Set<Events[keyof Events]>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Adds a listener that runs once. */
  once<K extends keyof Events>(event: K, fn: Events[K]): () => void {
    const wrap = ((...args: unknown[]) => {
      off();
      (fn as (...a: unknown[]) => void)(...args);
    }) as Events[K];
    const off = this.on(event, wrap);
    return off;
  }

  off<K extends keyof Events>(event: K, fn: Events[K]): void {
    this.handlers.get(event)?.delete(fn);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (...a: unknown[]) => void)(...args);
      } catch (e) {
        // A listener's exception must not break the client's state machine.
        if (event !== ("error" as K)) this.emit("error" as K, ...([e] as Parameters<Events[K]>));
        else setTimeout(() => { throw e; });
      }
    }
  }
}
